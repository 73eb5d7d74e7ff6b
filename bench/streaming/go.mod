module streambench

go 1.22

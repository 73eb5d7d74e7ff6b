// streambench: the streaming benchmark's upstream and load generator, in one small Go program.
//
// Why Go and not the devkit's Python fake: 1,000 streams of a chunk every 20 ms is ~50,000 SSE
// events a second that the upstream, the proxy under test and the client must all handle on the
// same 2 cores; Python on both ends would be what gets measured. Both commands here spend a few
// µs of CPU per event (measured by bench/streaming_bench.py and reported beside the proxy's).
//
//	streambench serve -listen 127.0.0.1:PORT [-first-ms 300] [-interval-ms 20] [-chunks 50]
//	streambench load -url URL -streams N -seconds S [-warmup S] [-key KEY] [-model M]
//
// serve: POST /v1/chat/completions answers a stream (stream: true) whose first chunk comes
// first-ms after the request and then one chunk every interval-ms (on a fixed schedule, so its
// own lateness does not accumulate), chunks in all, then a finish chunk, the usage chunk when
// stream_options.include_usage is set (every chunk then carries "usage":null, as OpenAI's do)
// and [DONE]. Each chunk's content is "t<unix ns when sent> ": the client reads it back to
// measure each chunk's delay from upstream to client. A non-stream request gets a plain
// completion (the harness's probe). GET /v1/models answers 200.
//
// load: N clients, each a closed loop of streams on its own keep-alive connection, their first
// streams staggered over one stream's length so that starts are spread evenly. Streams started
// after -warmup seconds are measured; no stream starts after -seconds. Prints one JSON object.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: streambench serve|load [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "load":
		load(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "usage: streambench serve|load [flags]")
		os.Exit(2)
	}
}

// ---- upstream ---------------------------------------------------------------------------------

type request struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

func serve(args []string) {
	flags := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := flags.String("listen", "127.0.0.1:8090", "address")
	firstMs := flags.Int("first-ms", 300, "milliseconds to the first chunk")
	intervalMs := flags.Int("interval-ms", 20, "milliseconds between chunks")
	chunks := flags.Int("chunks", 50, "content chunks per stream")
	_ = flags.Parse(args)
	first := time.Duration(*firstMs) * time.Millisecond
	interval := time.Duration(*intervalMs) * time.Millisecond

	mux := http.NewServeMux()
	mux.HandleFunc("/v1/models", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"object":"list","data":[]}`))
	})
	mux.HandleFunc("/v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		started := time.Now()
		var req request
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &req); err != nil {
			http.Error(w, `{"error":{"message":"bad json","type":"invalid_request_error","param":null,"code":null}}`, 400)
			return
		}
		model, _ := json.Marshal(req.Model)
		if !req.Stream {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"id":"chatcmpl-bench","object":"chat.completion","created":%d,"model":%s,`+
				`"choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],`+
				`"usage":{"prompt_tokens":20,"completion_tokens":1,"total_tokens":21}}`, started.Unix(), model)
			return
		}
		usage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
		tail := "}"
		if usage {
			tail = `,"usage":null}`
		}
		head := fmt.Sprintf(`data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":%d,"model":%s,`+
			`"system_fingerprint":"fp_bench","choices":[{"index":0,"delta":{`, started.Unix(), model)
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(200)
		flusher := w.(http.Flusher)
		flusher.Flush()
		buf := make([]byte, 0, 512)
		for i := 0; i < *chunks; i++ {
			time.Sleep(time.Until(started.Add(first + time.Duration(i)*interval)))
			buf = append(buf[:0], head...)
			if i == 0 {
				buf = append(buf, `"role":"assistant",`...)
			}
			buf = append(buf, `"content":"t`...)
			buf = strconv.AppendInt(buf, time.Now().UnixNano(), 10)
			buf = append(buf, ` "},"logprobs":null,"finish_reason":null}]`...)
			buf = append(buf, tail...)
			buf = append(buf, "\n\n"...)
			if _, err := w.Write(buf); err != nil {
				return
			}
			flusher.Flush()
		}
		buf = append(buf[:0], head...)
		buf = append(buf, `},"logprobs":null,"finish_reason":"stop"}]`...)
		buf = append(buf, tail...)
		buf = append(buf, "\n\n"...)
		if usage {
			buf = append(buf, fmt.Sprintf(`data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":%d,"model":%s,`+
				`"system_fingerprint":"fp_bench","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":%d,"total_tokens":%d}}`+"\n\n",
				started.Unix(), model, *chunks, 20+*chunks)...)
		}
		buf = append(buf, "data: [DONE]\n\n"...)
		_, _ = w.Write(buf)
	})
	server := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := server.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// ---- load generator ---------------------------------------------------------------------------

type recorder struct {
	mu       sync.Mutex
	ttft     []int64 // µs from sending the request to the first content chunk
	gaps     []int64 // µs between consecutive content chunks of a stream
	delays   []int64 // µs from the upstream's send (its timestamp) to this client's read
	streams  int
	chunks   int
	errors   map[string]int
	warmupOK int
}

func (r *recorder) fail(kind string) {
	r.mu.Lock()
	r.errors[kind]++
	r.mu.Unlock()
}

var contentMarker = []byte(`"content":"t`)

// oneStream runs one streaming call; it returns its measures, or an error kind.
func oneStream(client *http.Client, url, key string, body []byte, expect int) (ttft int64, gaps, delays []int64, errKind string) {
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	sent := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, nil, "connect_or_send"
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		_, _ = io.Copy(io.Discard, resp.Body)
		return 0, nil, nil, "http_" + strconv.Itoa(resp.StatusCode)
	}
	reader := bufio.NewReaderSize(resp.Body, 16384)
	var last time.Time
	content := 0
	done := false
	gaps = make([]int64, 0, expect)
	delays = make([]int64, 0, expect)
	for {
		line, err := reader.ReadSlice('\n')
		if len(line) > 0 && bytes.HasPrefix(line, []byte("data: ")) {
			now := time.Now()
			if bytes.HasPrefix(line[6:], []byte("[DONE]")) {
				done = true
			} else if at := bytes.Index(line, contentMarker); at >= 0 {
				digits := line[at+len(contentMarker):]
				end := bytes.IndexByte(digits, ' ')
				if end > 0 {
					if stamp, perr := strconv.ParseInt(string(digits[:end]), 10, 64); perr == nil {
						delays = append(delays, (now.UnixNano()-stamp)/1000)
					}
				}
				if content == 0 {
					ttft = now.Sub(sent).Microseconds()
				} else {
					gaps = append(gaps, now.Sub(last).Microseconds())
				}
				last = now
				content++
			} else if bytes.Contains(line, []byte(`"error"`)) {
				return 0, nil, nil, "error_event"
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil && err != bufio.ErrBufferFull {
			return 0, nil, nil, "read"
		}
	}
	if !done {
		return 0, nil, nil, "no_done"
	}
	if content != expect {
		return 0, nil, nil, "chunk_count"
	}
	return ttft, gaps, delays, ""
}

func percentiles(values []int64) map[string]float64 {
	out := map[string]float64{"count": float64(len(values))}
	if len(values) == 0 {
		return out
	}
	sort.Slice(values, func(i, j int) bool { return values[i] < values[j] })
	at := func(q float64) float64 {
		index := int(q*float64(len(values))+0.5) - 1
		if index < 0 {
			index = 0
		}
		if index >= len(values) {
			index = len(values) - 1
		}
		return float64(values[index])
	}
	var sum int64
	for _, v := range values {
		sum += v
	}
	out["p50"], out["p90"], out["p99"], out["p999"] = at(0.50), at(0.90), at(0.99), at(0.999)
	out["max"] = float64(values[len(values)-1])
	out["mean"] = float64(sum) / float64(len(values))
	return out
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
}

func load(args []string) {
	flags := flag.NewFlagSet("load", flag.ExitOnError)
	url := flags.String("url", "", "base URL ending in /v1")
	streams := flags.Int("streams", 100, "concurrent streaming clients")
	seconds := flags.Float64("seconds", 10, "no stream starts after this")
	warmup := flags.Float64("warmup", 2, "streams starting before this are not measured")
	key := flags.String("key", "sk-bench", "bearer token")
	model := flags.String("model", "gpt-4o-mini", "model asked for")
	chunks := flags.Int("chunks", 50, "content chunks each stream must carry")
	spread := flags.Float64("spread", 1.3, "seconds over which the first streams start")
	timeout := flags.Float64("timeout", 60, "seconds one stream may take")
	_ = flags.Parse(args)

	body, _ := json.Marshal(map[string]any{
		"model":    *model,
		"stream":   true,
		"messages": []map[string]string{{"role": "user", "content": "Stream a short story to the benchmark."}},
	})
	transport := &http.Transport{
		MaxIdleConns:        *streams * 2,
		MaxIdleConnsPerHost: *streams * 2,
		DisableCompression:  true,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
	}
	client := &http.Client{Transport: transport, Timeout: time.Duration(*timeout * float64(time.Second))}
	rec := &recorder{errors: map[string]int{}}
	start := time.Now()
	cpuStart := cpuSeconds()
	measureFrom := start.Add(time.Duration(*warmup * float64(time.Second)))
	stopAt := start.Add(time.Duration(*seconds * float64(time.Second)))
	var wg sync.WaitGroup
	for i := 0; i < *streams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			time.Sleep(time.Duration(float64(i) / float64(*streams) * *spread * float64(time.Second)))
			for time.Now().Before(stopAt) {
				began := time.Now()
				ttft, gaps, delays, kind := oneStream(client, *url+"/chat/completions", *key, body, *chunks)
				measured := began.After(measureFrom)
				if kind != "" {
					if !measured {
						kind = "warmup_" + kind
					}
					rec.fail(kind)
					time.Sleep(50 * time.Millisecond) // not a busy loop against a refusing target
					continue
				}
				rec.mu.Lock()
				if measured {
					rec.streams++
					rec.chunks += len(gaps) + 1
					rec.ttft = append(rec.ttft, ttft)
					rec.gaps = append(rec.gaps, gaps...)
					rec.delays = append(rec.delays, delays...)
				} else {
					rec.warmupOK++
				}
				rec.mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	errorsTotal := 0
	for _, n := range rec.errors {
		errorsTotal += n
	}
	out := map[string]any{
		"streams":           *streams,
		"duration_s":        elapsed,
		"measured_streams":  rec.streams,
		"warmup_streams":    rec.warmupOK,
		"chunks":            rec.chunks,
		"errors":            errorsTotal,
		"error_detail":      rec.errors,
		"ttft_us":           percentiles(rec.ttft),
		"gap_us":            percentiles(rec.gaps),
		"chunk_delay_us":    percentiles(rec.delays),
		"generator_cpu_s":   cpuSeconds() - cpuStart,
		"events_per_second": float64(rec.chunks) / (elapsed - *warmup),
	}
	encoded, _ := json.Marshal(out)
	fmt.Println(string(encoded))
}

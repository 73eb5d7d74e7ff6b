"""openai_policy_devkit: the tooling that runs the product without a cluster or an OpenAI account.

Not part of either image (the Dockerfiles never copy devkit/, and import-linter forbids product
code to import it), but product tooling all the same, used by the tests, e2e/, bench/ and
`make demo`:

- fake_openai: a faithful fake of the OpenAI API (plain and streamed replies, usage, errors,
  scripted faults); `python -m openai_policy_devkit.fake_openai --help` runs one standalone;
- control_plane: a local Kubernetes control plane, envtest style (etcd, kube-apiserver,
  kube-controller-manager from KUBEBUILDER_ASSETS); `python -m openai_policy_devkit.control_plane`;
- redis_server, managed_process: throwaway servers and child processes that never outlive a run;
- pod_runner: runs a stored Pod's containers as local processes, a tiny kubelet;
- polling.wait_for: the one polling loop;
- the pytest plugins environment, fake_openai_fixture, redis_fixture and control_plane_fixture,
  registered by tests/conftest.py and e2e/conftest.py.
"""

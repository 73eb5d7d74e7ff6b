"""``kubectl oaip``: the operator's kubectl plugin.

Everything goes through the real ``kubectl`` found on PATH with the caller's kubeconfig, context
and RBAC (a kubectl plugin is run by kubectl with them in its environment); the plugin never talks
to Redis or to a sidecar directly. Each command is a plain function over parsed objects; the
``__main__`` module only wires arguments to them.
"""

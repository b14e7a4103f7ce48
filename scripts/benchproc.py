"""Process helpers shared by the benchmark scripts: free ports, waiting for a listener, CPU
seconds and peak RSS from /proc, a metric from a server's /metrics, the load average."""

import os
import re
import socket
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        kib = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M).group(1)
    return round(int(kib) / 1024, 1)


def metric(base, name):
    body = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name} (\d+)$", body, re.M)
    return int(m.group(1)) if m else 0


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])

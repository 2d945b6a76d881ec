"""What the pgq-bench consumer scripts share: the handshake with pgq-bench and the JSON line
they end with. Python puts a script's own directory first on sys.path, so they import it."""
import json
import sys


def peak_rss_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def wait_for_go():
    """Says "ready" and waits for pgq-bench's go, a line on stdin."""
    print("ready", flush=True)
    sys.stdin.readline()


def report(**figures):
    """Prints figures and this process's peak RSS (kB) as one JSON line."""
    figures["peak_rss_kb"] = peak_rss_kb()
    print(json.dumps(figures), flush=True)

#!/usr/bin/env python3
"""Live capture loss against a bounded loopback sender (issue #4).

Starts ``xfer-sensor run -i lo --allow-root`` (with /metrics on a free
loopback port) in endpoint mode -- its attribution helper process with its
first-packet tap and lookups runs beside the capture -- or, with
``--no-attribution``, in span mode; then a sender process that writes pre-built TFTP read requests
(UDP to 127.0.0.69:69) from many distinct flows (sources 127.1.x.y:port) at
a paced rate, for a bounded number of packets, through an AF_PACKET socket on
``lo`` -- loopback only, nothing leaves the host. A UDP socket bound to
127.0.0.69:69 (never read) takes the datagrams so the kernel sends no ICMP.

Loss is measured end to end: once the sensor has caught up (its
``packets_received_total`` stops moving), SIGTERM makes it write every flow;
the sum of ``SentPackets`` over the records of the sender's flows is what the
sensor processed. Also reported: libpcap's kernel/interface drop counters
(from /metrics), the helper's tap drops and rate-limited lookups, and the CPU
time of each process and of the machine.

    sudo .venv/bin/python bench/live_loss.py                       # 100k pps for 10 s, attribution on
    sudo .venv/bin/python bench/live_loss.py --rate 50000 --seconds 5 --no-attribution
    sudo .venv/bin/python bench/live_loss.py --span --rate 250000 --traffic tcp-session   # on a mirror port

``--span``: the sensor captures a span port instead of ``lo`` -- ``tc`` mirrors
everything entering ``lo`` (``mirred egress mirror``) to a veth pair inside the
bench's own namespace, and ``run --mode span -i llspan1`` captures its far end
(see ``setup_span``).

Not a test: timings depend on the machine; it prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DST = "127.0.0.69"  # loopback only
DST_PORT = 69
TCP_PORT = 445
SRC_NET = ipaddress.ip_network("127.1.0.0/16")  # the sender's flows
ETH_P_IP = 0x0800
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
IDLE_PACKETS = 200  # received per 0.25 s below which the sensor counts as caught up


# -- the sender (a process of its own) --------------------------------------------------------------


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def flow_addr(i: int) -> tuple[str, int]:
    """Flow i's source: 127.1.(i // 250 % 250 + 1).(i % 250 + 1), port 10000 + i // 62500."""
    host = i % 62500
    return f"127.1.{host // 250 + 1}.{host % 250 + 1}", 10000 + i // 62500


def _ether_ip(i: int, proto: int, l4: bytes) -> bytes:
    src, _ = flow_addr(i)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(l4),
        i & 0xFFFF,
        0x4000,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(DST),
    )
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return b"\0" * 12 + struct.pack("!H", ETH_P_IP) + ip + l4  # lo's all-zero MACs


def frame(i: int) -> bytes:
    """A TFTP RRQ of flow i (UDP to DST:69); repeated, it is a retransmission."""
    _, sport = flow_addr(i)
    payload = b"\x00\x01" + f"f{i}.bin".encode() + b"\x00octet\x00"
    udp = struct.pack("!HHHH", sport, DST_PORT, 8 + len(payload), 0) + payload  # checksum 0: none
    return _ether_ip(i, 17, udp)


def tcp_frames(i: int) -> tuple[bytes, bytes]:
    """Flow i to DST:445: its SYN, and an ACK carrying no payload (the rest of
    the flow repeats it, like the ACK stream of a download). The TCP checksum
    is deliberately wrong: the kernel drops the segments without answering
    RSTs, the capture (before the stack) sees them like any other."""
    _, sport = flow_addr(i)
    isn = (i * 2654435761) & 0xFFFFFFFF

    def seg(seq: int, ack: int, flags: int) -> bytes:
        return struct.pack("!HHIIBBHHH", sport, TCP_PORT, seq, ack, 5 << 4, flags, 65535, 0xBAD1, 0)

    return _ether_ip(i, 6, seg(isn, 0, 0x02)), _ether_ip(i, 6, seg((isn + 1) & 0xFFFFFFFF, 1, 0x10))


def tcp_session_frames(i: int) -> tuple[bytes, bytes, bytes]:
    """Flow i as an established connection to DST:445: the client's SYN, the
    server's SYN-ACK, then the client's ACKs (no payload: the ACK stream of a
    download). Checksums deliberately wrong, as in ``tcp_frames``."""
    src, sport = flow_addr(i)
    isn = (i * 2654435761) & 0xFFFFFFFF
    sisn = (i * 40503 + 12345) & 0xFFFFFFFF

    def seg(a: int, b: int, seq: int, ack: int, flags: int) -> bytes:
        return struct.pack("!HHIIBBHHH", a, b, seq, ack, 5 << 4, flags, 65535, 0xBAD1, 0)

    syn = _ether_ip(i, 6, seg(sport, TCP_PORT, isn, 0, 0x02))
    l4 = seg(TCP_PORT, sport, sisn, (isn + 1) & 0xFFFFFFFF, 0x12)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(l4),
        i & 0xFFFF,
        0x4000,
        64,
        6,
        0,
        socket.inet_aton(DST),
        socket.inet_aton(src),
    )
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    synack = b"\0" * 12 + struct.pack("!H", ETH_P_IP) + ip + l4
    ack = _ether_ip(i, 6, seg(sport, TCP_PORT, (isn + 1) & 0xFFFFFFFF, (sisn + 1) & 0xFFFFFFFF, 0x10))
    return syn, synack, ack


def schedule(total: int, flows_per_block: int, packets_per_flow: int) -> list[int]:
    """Flow index of each packet: blocks of ``flows_per_block`` flows sent
    round-robin, ``packets_per_flow`` each (an RRQ and its retransmissions);
    a new block starts when one is done, so new flows arrive all along."""
    per_block = flows_per_block * packets_per_flow
    return [(n // per_block) * flows_per_block + (n % per_block) % flows_per_block for n in range(total)]


def sender_main(a: argparse.Namespace) -> int:
    total = int(a.rate * a.seconds)
    order = schedule(total, a.flows_per_block, a.packets_per_flow)
    nflows = (max(order) + 1) if order else 0
    if a.traffic == "tftp":
        frames = [frame(i) for i in range(nflows)]
        seq = [frames[f] for f in order]
    elif a.traffic == "tcp":  # the first packet of each flow is its SYN
        frames2 = [tcp_frames(i) for i in range(nflows)]
        per_block = a.flows_per_block * a.packets_per_flow
        seq = [frames2[f][0 if (n % per_block) < a.flows_per_block else 1] for n, f in enumerate(order)]
    else:  # tcp-session: SYN, SYN-ACK, then ACKs
        frames3 = [tcp_session_frames(i) for i in range(nflows)]
        per_block = a.flows_per_block * a.packets_per_flow
        seq = [frames3[f][min(2, (n % per_block) // a.flows_per_block)] for n, f in enumerate(order)]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    except OSError:
        pass
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind(("lo", 0))
    send = s.send
    batch = max(1, a.batch)
    interval = batch / a.rate
    errors = 0
    max_lag = 0.0
    print(json.dumps({"ready": True, "packets": total, "flows": nflows}), flush=True)
    sys.stdin.readline()  # go
    cpu0 = os.times()
    t0 = time.monotonic()
    sent = 0
    for b, start in enumerate(range(0, total, batch)):
        target = t0 + b * interval
        now = time.monotonic()
        if now < target:
            time.sleep(target - now)
        else:
            max_lag = max(max_lag, now - target)
        for fr in seq[start : start + batch]:
            while True:
                try:
                    send(fr)
                    break
                except BlockingIOError:
                    errors += 1
                except OSError as e:  # ENOBUFS: retry, count
                    if e.errno != 105:
                        raise
                    errors += 1
        sent += len(seq[start : start + batch])
    elapsed = time.monotonic() - t0
    cpu1 = os.times()
    s.close()
    print(
        json.dumps(
            {
                "sent": sent,
                "flows": nflows,
                "elapsed_s": elapsed,
                "rate_pps": sent / elapsed if elapsed else 0,
                "send_retries": errors,
                "max_lag_s": max_lag,
                "cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
            }
        ),
        flush=True,
    )
    return 0


# -- the span port (--span) ------------------------------------------------------------------------

SPAN_IF, SPAN_PEER = "llspan0", "llspan1"  # the mirror's target / the sensor's span interface


def setup_span() -> str:
    """A span port in this (the bench's own) namespace: a veth pair, and a
    clsact filter copying every frame entering ``lo`` (the sender's packets,
    each once) to its near end (``matchall``; ``u32 match u32 0 0`` where the
    kernel lacks cls_matchall). Returns the far end, the interface to capture."""

    def ip(*argv: str) -> None:
        subprocess.run(["ip", *argv], check=True, capture_output=True)

    ip("link", "add", SPAN_IF, "type", "veth", "peer", "name", SPAN_PEER)
    for ifc in (SPAN_IF, SPAN_PEER):  # lo's frames are up to 64 KiB: a smaller MTU drops them at the veth
        ip("link", "set", ifc, "mtu", "65535", "up")
    subprocess.run(["tc", "qdisc", "add", "dev", "lo", "clsact"], check=True, capture_output=True)
    action = ["action", "mirred", "egress", "mirror", "dev", SPAN_IF]
    flt = ["tc", "filter", "add", "dev", "lo", "ingress"]
    if subprocess.run([*flt, "matchall", *action], capture_output=True).returncode != 0:
        subprocess.run(
            [*flt, "protocol", "all", "u32", "match", "u32", "0", "0", *action], check=True, capture_output=True
        )
    return SPAN_PEER


def mirror_stats() -> dict:
    """The mirror action's counters (packets copied, dropped) and the
    interfaces' drop counters along the way."""
    out: dict = {}
    cp = subprocess.run(["tc", "-s", "-j", "filter", "show", "dev", "lo", "ingress"], capture_output=True, text=True)
    try:
        for f in json.loads(cp.stdout or "[]"):
            for act in (f.get("options") or {}).get("actions") or []:
                st = act.get("stats") or {}
                out["mirrored"] = out.get("mirrored", 0) + int(st.get("packets", 0))
                out["mirror_dropped"] = out.get("mirror_dropped", 0) + int(st.get("drops", 0))
    except (ValueError, AttributeError, TypeError):
        pass
    for ifc in (SPAN_IF, SPAN_PEER):  # (ip, not /sys: sysfs shows the namespace it was mounted in)
        cp = subprocess.run(["ip", "-s", "-j", "link", "show", "dev", ifc], capture_output=True, text=True)
        try:
            st = json.loads(cp.stdout)[0]["stats64"]
            out[f"{ifc}_tx_dropped"], out[f"{ifc}_rx_dropped"] = int(st["tx"]["dropped"]), int(st["rx"]["dropped"])
        except (ValueError, LookupError, TypeError):
            pass
    return out


# -- the harness -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid: int) -> float:
    """utime + stime of a process and its reaped children are not summed: this process only, seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


def machine_busy() -> tuple[float, float]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, float(sum(v))


def scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict = {}
    for ln in text.splitlines():
        if ln.startswith("#"):
            continue
        m = re.match(r"^(\w+)(\{[^}]*\})? (\S+)$", ln)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=100_000, help="packets per second (default 100000)")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long to send (default 10)")
    ap.add_argument("--flows-per-block", type=int, default=1000, help="flows interleaved at a time (default 1000)")
    ap.add_argument(
        "--packets-per-flow",
        type=int,
        default=10,
        help="datagrams per flow (default 10: 10,000 new flows/s at 100k pps)",
    )
    ap.add_argument(
        "--traffic",
        choices=("tftp", "tcp", "tcp-session"),
        default="tftp",
        help="tftp: RRQs (and retransmissions) to 127.0.0.69:69, each parsed by the TFTP analyzer; "
        "tcp: a SYN then payload-less ACKs to 127.0.0.69:445 (flow tracking only, never "
        "established); tcp-session: SYN, the server's SYN-ACK, then the client's ACKs "
        "(established connections, as a transfer's packets are)",
    )
    ap.add_argument("--batch", type=int, default=100, help="packets sent between two pacing checks")
    ap.add_argument("--no-attribution", action="store_true", help="span mode: no attribution helper")
    ap.add_argument("--workers", default="1", help="run --workers: capture processes (default 1)")
    ap.add_argument(
        "--span",
        action="store_true",
        help="capture a span port: lo's ingress mirrored by tc to a veth pair, the sensor in span mode "
        "on its far end (implies --no-attribution; needs the bench's own namespace)",
    )
    ap.add_argument("--sensor", help="xfer-sensor console script (default: next to this python)")
    ap.add_argument("--keep-out", action="store_true", help="keep the sensor's output folder")
    ap.add_argument("--json", help="also write the result to this file")
    ap.add_argument(
        "--shared-netns",
        action="store_true",
        help="run in the current network namespace (default: a new one, via unshare --net)",
    )
    ap.add_argument("--_sender", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_in_netns", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._sender:
        return sender_main(a)
    if a.span and a.shared_netns:
        print("live_loss: --span needs the bench's own namespace (no --shared-netns)", file=sys.stderr)
        return 2
    a.no_attribution = a.no_attribution or a.span
    if os.geteuid() != 0:
        print("live_loss: needs root (AF_PACKET sender, capture, attribution helper)", file=sys.stderr)
        return 2
    if not a.shared_netns and not a._in_netns:
        # a network namespace of our own: its lo carries only this bench's
        # packets, and the flood never reaches other captures on the host's lo
        args = list(argv if argv is not None else sys.argv[1:])
        os.execvp(
            "unshare", ["unshare", "--net", "--", sys.executable, os.path.abspath(__file__), *args, "--_in_netns"]
        )
    if a._in_netns:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    iface = setup_span() if a.span else "lo"
    sensor = a.sensor or str(Path(sys.executable).parent / "xfer-sensor")
    work = Path(tempfile.mkdtemp(prefix="xfer-live-loss-"))
    out = work / "out"
    total = int(a.rate * a.seconds)
    nflows_est = total // a.packets_per_flow + a.flows_per_block
    mport = free_port()
    cfg = work / "config.yaml"
    cfg.write_text(
        f"home_net: [{SRC_NET}]\n"
        f"limits: {{max_flows: {max(100_000, 2 * nflows_est)}}}\n"
        f"output: {{queue_max: {max(10_000, 2 * nflows_est)}}}\n"
        f"metrics_listen: 127.0.0.1:{mport}\n"
        # the TCP segments carry a wrong checksum on purpose (the kernel drops
        # them without answering); the sensor is told not to verify, or it
        # would drop them too and there would be nothing to measure
        'checksum_validation: "no"\n'
    )
    url = f"http://127.0.0.1:{mport}/metrics"
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes the datagrams: no ICMP unreachable
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink.bind((DST, DST_PORT))
    helper = None
    daemon = None
    sender = None
    result: dict = {
        "traffic": a.traffic,
        "netns": "own" if a._in_netns else "shared",
        "loadavg_before": os.getloadavg()[0],
        "rate_target_pps": a.rate,
        "seconds": a.seconds,
        "attribution": not a.no_attribution,
        "workers": a.workers,
        "span": a.span,
        "flows_per_block": a.flows_per_block,
        "packets_per_flow": a.packets_per_flow,
    }
    try:
        err_path = work / "daemon.err"
        daemon = subprocess.Popen(
            [
                sensor,
                "run",
                "-i",
                iface,
                "--allow-root",
                "--config",
                str(cfg),
                "--out",
                str(out),
                "--state-dir",
                str(work / "state"),
                "--mode",
                "span" if a.no_attribution else "endpoint",
                "--workers",
                a.workers,
            ],
            stderr=open(err_path, "wb"),
        )
        end = time.time() + 20
        started = f"capturing on {iface}" + (" with" if a.workers != "1" else "")
        while started not in err_path.read_text(errors="replace"):
            if time.time() > end or daemon.poll() is not None:
                raise SystemExit("the sensor did not start:\n" + err_path.read_text(errors="replace"))
            time.sleep(0.1)
        if not a.no_attribution:  # the daemon's own helper process
            import psutil

            helper = next(
                (
                    c.pid
                    for c in psutil.Process(daemon.pid).children()
                    if "sensor.attribution.attributor" in " ".join(c.cmdline())
                ),
                None,
            )
            if helper is None:
                raise SystemExit("the sensor runs without its attribution helper:\n" + err_path.read_text())
        sender = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--_sender",
                "--rate",
                str(a.rate),
                "--seconds",
                str(a.seconds),
                "--flows-per-block",
                str(a.flows_per_block),
                "--packets-per-flow",
                str(a.packets_per_flow),
                "--batch",
                str(a.batch),
                "--traffic",
                a.traffic,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = sender.stdout.readline()
        if not line:
            raise SystemExit("the sender did not start")
        ready = json.loads(line)
        base = scrape(url)
        mirror0 = mirror_stats() if a.span else {}
        pids = {"sensor": daemon.pid, "sender": sender.pid}
        if a.workers != "1":  # the supervisor's workers (its children but the helper)
            import psutil

            for c in psutil.Process(daemon.pid).children():
                if c.pid != helper:
                    pids[f"worker_{len(pids) - 2}"] = c.pid
        if helper is not None:
            pids["attribution_helper"] = helper
        cpu0 = {k: proc_cpu(p) for k, p in pids.items()}
        busy0 = machine_busy()
        t0 = time.monotonic()
        sender.stdin.write("go\n")
        sender.stdin.flush()
        line = sender.stdout.readline()
        if not line:
            raise SystemExit("the sender failed")
        sent = json.loads(line)
        sender.wait(10)
        cpu_sender = sent["cpu_s"]
        # wait until the sensor has taken everything the kernel captured: its
        # received counter stops moving (but for the scrapes themselves, which
        # it captures too when the metrics port is in the ephemeral range)
        last, stable_since = -1e18, time.monotonic()
        while time.monotonic() - stable_since < 2.0 and time.monotonic() - t0 < a.seconds + 120:
            time.sleep(0.25)
            cur = scrape(url).get(f'xfer_sensor_packets_received_total{{interface="{iface}"}}', 0.0)
            if cur - last > IDLE_PACKETS:
                stable_since = time.monotonic()
            last = cur
        caught_up = time.monotonic() - t0
        m = scrape(url)
        mirror1 = mirror_stats() if a.span else {}
        busy1 = machine_busy()
        cpu1 = {k: proc_cpu(p) for k, p in pids.items()}
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        recs = (
            [json.loads(x) for x in (out / "connections.jsonl").read_text().splitlines()]
            if (out / "connections.jsonl").exists()
            else []
        )
        port = DST_PORT if a.traffic == "tftp" else TCP_PORT
        ours = [
            r
            for r in recs
            if r.get("RemoteIP") == DST
            and r.get("RemotePort") == port
            and ipaddress.ip_address(r.get("LocalIP", "0.0.0.0")) in SRC_NET
        ]
        seen = sum(int(r.get("SentPackets", 0)) + int(r.get("ReceivedPackets", 0)) for r in ours)
        flows_seen = len({(r["LocalIP"], r["LocalPort"]) for r in ours})

        def d(k: str) -> float:
            return m.get(k, 0.0) - base.get(k, 0.0)

        window = busy1[1] - busy0[1]
        sensor_cpu = sum(cpu1[k] - cpu0[k] for k in pids if k == "sensor" or k.startswith("worker_"))
        result.update(
            {
                "sent": sent["sent"],
                "send_rate_pps": round(sent["rate_pps"]),
                "send_elapsed_s": round(sent["elapsed_s"], 3),
                "send_max_lag_s": round(sent["max_lag_s"], 4),
                "send_retries": sent["send_retries"],
                "flows_sent": ready["flows"],
                "flows_recorded": flows_seen,
                "sensor_processed_of_ours": seen,
                "loss_pct": round(100.0 * (sent["sent"] - seen) / sent["sent"], 4) if sent["sent"] else 0.0,
                "pcap_received": d(f'xfer_sensor_packets_received_total{{interface="{iface}"}}'),
                "pcap_kernel_received": d(f'xfer_sensor_packets_kernel_received_total{{interface="{iface}"}}'),
                "kernel_dropped": d(f'xfer_sensor_packets_dropped_total{{interface="{iface}",by="kernel"}}'),
                "interface_dropped": d(f'xfer_sensor_packets_dropped_total{{interface="{iface}",by="interface"}}'),
                "sensor_caught_up_after_s": round(caught_up, 2),
                # how long after the last packet was sent the sensor was still working through the
                # capture ring buffer's backlog (the 2 s of quiet that ends the wait excluded; resolution
                # ~1.3 s: the sensor publishes its figures every second, polled every 0.25 s)
                "sensor_lag_after_send_s": round(max(0.0, caught_up - 2.0 - sent["elapsed_s"]), 2),
                "sensor_packets_per_cpu_s": round(seen / sensor_cpu) if sensor_cpu else None,
                "cpu_s": {
                    "sender": round(cpu_sender, 2),
                    **{k: round(cpu1[k] - cpu0[k], 2) for k in pids if k != "sender"},
                },
                "machine_busy_pct": round(100.0 * (busy1[0] - busy0[0]) / window, 1) if window else 0.0,
                "cpus": os.cpu_count(),
            }
        )
        if a.span:  # what the tc mirror copied and dropped (deltas over the run)
            result["mirror"] = {k: v - mirror0.get(k, 0) for k, v in mirror1.items()}
        if helper is not None:  # the helper's counters, as /metrics shows them
            result["attribution_helper"] = {
                "lookups": d("xfer_sensor_attribution_lookups_total"),
                "rate_limited": d("xfer_sensor_attribution_rate_limited_total"),
                "tap_kernel_drops": d("xfer_sensor_attribution_tap_dropped_total"),
                "up": m.get("xfer_sensor_attribution_helper_up"),
            }
    finally:
        for p in (sender, daemon):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        sink.close()
        if not a.keep_out:
            shutil.rmtree(work, ignore_errors=True)
        else:
            result["out"] = str(work)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"sent {result['sent']} packets in {result['send_elapsed_s']} s ({result['send_rate_pps']} pps, "
        f"{result['flows_sent']} flows); the sensor processed {result['sensor_processed_of_ours']} of them "
        f"({result['flows_recorded']} flows recorded): loss {result['loss_pct']} %"
    )
    print(
        f"libpcap: received {result['pcap_received']:.0f}, kernel dropped {result['kernel_dropped']:.0f}, "
        f"interface dropped {result['interface_dropped']:.0f}; caught up {result['sensor_caught_up_after_s']} s "
        f"after the start (still catching up {result['sensor_lag_after_send_s']} s after the last packet; "
        f"{result['sensor_packets_per_cpu_s']} packets per sensor CPU-second); CPU s {result['cpu_s']}, machine busy {result['machine_busy_pct']} % of "
        f"{result['cpus']} CPUs"
    )
    if result.get("attribution_helper"):
        print("attribution helper:", json.dumps(result["attribution_helper"]))
    if result.get("mirror"):
        print("span mirror:", json.dumps(result["mirror"]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

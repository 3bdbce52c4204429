"""Real-traffic lab: network namespaces, real servers and clients, tcpdump, tshark.

Plain Python (no pytest inside), used by tests/test_real_tshark_oracle.py and
pcaps/record_real.py.  Needs root.  Traffic stays inside the namespaces it
creates (no default route there).

* netns.py     -- Lab (two namespaces and a veth pair), Capture (tcpdump)
* servers.py   -- vsftpd (21, 990 implicit TLS), tftpd-hpa, smbd; lab users and files
* scenarios.py -- client scenarios with ground truth; record_all / record_fast
* oracle.py    -- tshark's (pyshark) per-conversation view of a capture
* clients.py   -- local client users; running a client as one of them (its pid)
* poller.py    -- the polling baseline (psutil.net_connections every 100 ms)
* sensor.py    -- ``xfer-sensor run`` as a daemon inside a lab namespace
"""

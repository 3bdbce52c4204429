"""Helpers shared by the tests (no tests in here).

* craft.py        -- crafted traffic (scapy): TCP/UDP sessions, links, pcap writers
* replay.py       -- crafted packets or a capture through the whole pipeline (the ``replay`` fixture)
* linesink.py     -- a sink keeping every record as its output line, for byte-for-byte comparisons
* mutated.py      -- mutated Ethernet captures from fuzz/mutate.py's generator
* loopback_ftp.py -- a minimal FTP server on loopback and the daemon as a child process
* tls.py          -- a real OpenSSL ClientHello (memory BIOs, no network)

The root lab (network namespaces, real servers and clients) is ``tests.lab``.
"""

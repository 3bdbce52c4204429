"""TCP reassembly: in order, out of order, retransmissions, wrap, bounds, gaps."""

from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.engine.reassembly import ReassemblyLimits, Stream


def data_of(chunks):
    return b"".join(c.data for c in chunks)


def test_in_order_and_retransmission():
    s = Stream()
    s.start(1000)
    assert data_of(s.segment(1000, b"abc")) == b"abc"
    assert s.segment(1000, b"abc") == []  # retransmission
    assert data_of(s.segment(1001, b"bcdef")) == b"def"  # overlap
    assert s.next == 6


def test_out_of_order_waits_then_drains():
    s = Stream()
    s.start(0)
    assert s.segment(3, b"def") == []
    assert data_of(s.segment(0, b"abc")) == b"abcdef"


def test_wrap_around():
    s = Stream()
    s.start(0xFFFFFFFE)
    assert data_of(s.segment(0xFFFFFFFE, b"ab")) == b"ab"
    assert data_of(s.segment(0, b"cd")) == b"cd"
    assert s.next == 4


def test_midstream_start_signals_unknown_gap():
    s = Stream()
    out = s.segment(555, b"hello")
    assert out[0].gap == -1 and data_of(out) == b"hello"


def test_full_ooo_buffer_declares_gap():
    s = Stream(ReassemblyLimits(max_ooo_segments=2))
    s.start(0)
    s.segment(10, b"x")
    s.segment(12, b"y")
    out = s.segment(14, b"z")  # third waiting segment: give up on 0..10
    assert out[0].gap == 10 and data_of(out) == b"x"
    assert s.gaps == 1


def test_flush_reports_trailing_hole():
    s = Stream()
    s.start(0)
    s.segment(0, b"ab")
    s.segment(5, b"fg")
    out = s.flush()
    assert [c.gap for c in out] == [3, 0] and data_of(out) == b"fg"


def test_depth_limit():
    s = Stream(ReassemblyLimits(depth=4))
    s.start(0)
    assert data_of(s.segment(0, b"abcdef")) == b"abcd"
    assert s.depth_reached and s.segment(6, b"gh") == []


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=400), st.integers(0, 2**32 - 1), st.randoms(use_true_random=False))
def test_any_segmentation_and_order_reassembles_the_same_bytes(payload, isn, rnd):
    cuts = (
        sorted(rnd.sample(range(1, len(payload)), min(len(payload) - 1, rnd.randrange(0, 8))))
        if len(payload) > 1
        else []
    )
    bounds = [0] + cuts + [len(payload)]
    segs = [((isn + a) & 0xFFFFFFFF, payload[a:b]) for a, b in zip(bounds, bounds[1:])]
    segs += rnd.sample(segs, min(len(segs), 2))  # duplicates
    rnd.shuffle(segs)
    s = Stream()
    s.start(isn)
    got = b""
    for seq, p in segs:
        got += data_of(s.segment(seq, p))
    got += data_of(s.flush())
    assert got == payload

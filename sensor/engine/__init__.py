"""Packets to flows to analyzer input: decode, flow table, expectations, reassembly, dispatch."""

"""Hypothesis strategies for `emu.wire` headers and whole frames.

Users import them in their own property tests of encap/decap::

    from emu.testing import strategies as wire_st
"""

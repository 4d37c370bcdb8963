"""Tests of vhjax.transfer."""

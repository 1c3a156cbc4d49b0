"""The promotion gate (`sn72-promote`): an offline tool; the miner never imports it."""

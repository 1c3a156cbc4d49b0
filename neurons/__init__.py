"""The miner process: axon, protocol, metagraph, guards. Imports no torch."""

"""The inference engine: a cascade of models, cheapest first, answering before a deadline. Imports no bittensor."""

"""The Anthropic LLM agent: a client of the core that writes the diagnosis from the evidence tables.

Nothing in the core imports this package except the one dispatch point in
`mldebug_ray.pipeline`; `anthropic` itself is imported only when a call is made.
"""

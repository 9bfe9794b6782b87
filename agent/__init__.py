"""The chat agent (terminal chat, fact detection and confirmation, langchain-core adapter).

Not built yet: see the agent issue. Imports flow cli -> agent -> (memory, store).
"""

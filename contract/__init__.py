"""What edge and gateway agree on: event and status models, the topic tree, config loading.

Floor 1: imports nothing of ours.
"""

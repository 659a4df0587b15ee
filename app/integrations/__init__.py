"""The evaluation system as a reward for other RL engines: one small module per engine (trl,
verl, openrlhf) over one shared evaluator pool per process (scorer), and the reward server
(server). No torch here: these modules load inside the engine's own environment.
"""

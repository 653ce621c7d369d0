"""The reward-hacking watch as pure data and functions: `rules` (what each rule means, a run's
watch settings) and `flags` (flagging a step's rollouts, trends, the pause rule)."""

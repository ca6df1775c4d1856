"""Where prompts and preferences come from: `sources` (files of prompts, preferences or rankings, with row
checks) and `tasks` (the built-in verifiable tasks: arithmetic, calendar). Imports only `rlcore.core`."""

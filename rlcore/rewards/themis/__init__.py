"""Themis: a tool-augmented reward model (Li et al., "Tool-Augmented Reward Modeling", ICLR 2024).

The reward model reads a question and an answer, then writes its own tool calls
and a rationale; the tools' observations are inserted by the caller; a scalar
head on the final token gives the reward:

    Question: How many days pass between 2015-11-05 and 2011-01-11?       context (given)
    Answer: The difference between 2015-11-05 and 2011-01-11 is 279
    Thought: I need to search how many days is the difference ...       tool       (generated)
    Action: Calendar.day_difference
    Action Input: 2015-11-05, 2011-01-11
    Observation:                                                           (generation stops here)
     1759                                                                 observation (the tool ran)
    Rationale: The answer ... contradicts the tool's 1759 days ...<eos>   rationale  (generated)
                                                                   ^ reward = value_head(h_eos)

The trace lines are `rlcore.rewards.tara.render_trace`'s. `ThemisModel` is a causal LM
plus a linear value head on the final hidden state, saved as one folder (the
LM's own files, its tokenizer, `value_head.safetensors`). Training on TARA rows
minimises the paper's total loss

    L = rank_weight · L_RM + tool_weight · L_tool + rationale_weight · L_rationale

with L_RM = −log σ(r_pos − r_neg) (InstructGPT eq. 1) and the L_tool / L_rationale
token-mean NLL of the tool-call text (Thought / Action / Action Input and the
"Observation:" label, not the observations the tools wrote) and of the
rationale (with its eos), on both answers of a pair. With `use_tools=False` the
same model reads only "Question: ...\\nAnswer: ...\\n<eos>" and is trained by
L_RM alone: a plain reward model, the paper's baseline. With `rationale=False`
(the paper's "w/o L_T" ablation) the trace ends at the last observation: the
model writes its calls, then eos, and the head reads the final token there.

Scoring (`score_with_tools`) interleaves generation and tools: generate until
the model writes "Observation:" or eos; parse its action (`rlcore.rewards.tools`), run
the tool, insert " <observation>\\n", and go on, at most `max_calls` calls. A
malformed action, an unknown tool, a failing or slow tool all become
observations ("Error: ..."), never exceptions.

Each segment is tokenised on its own and the ids are concatenated, in training
and in scoring alike, so a generated trace is read exactly as a recorded one.

Modules, by concern: `trace` (the trace format and its tokenisation), `model`
(`ThemisModel`: LM + value head, save / load, scoring complete traces),
`tool_loop` (generation interleaved with real tool calls), `generated`
(more TARA-format pairs with fresh arguments and real tools; the restated
trace), `training` (config, loss, accuracies and call checks, `train_themis`).
"""

"""
The research core: what a candidate is compared with and where its history lives.

    acceptance_rule.py  keep a candidate only if it beats the incumbent by more than the noise
    program.py          program.md and its Strategy section
    code_edit.py        diffs, change types, and whether a train.py compiles
    workspace.py        the experiment's git workspace and run directories
    lock.py             one run of an experiment at a time
"""

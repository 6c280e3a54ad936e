"""The review documents drafted from an incident's record: postmortem, compliance mapping,
EU AI Act Art. 73 report."""

"""The deployment rehearsal: template.yaml deployed into MiniStack and exercised end to end (make rehearse)."""

"""Sample knowledge loaded by `make run`: a fictional company's help center."""

# The sample company's agents work Monday to Friday, 8:00-18:00 US Eastern (its contact-support article says so):
# serving the sample help center, the handoff notices follow those hours unless SUPPORT_HANDOFF__* says otherwise.
AGENT_HOURS = {"timezone": "America/New_York", "opens": "08:00", "closes": "18:00"}

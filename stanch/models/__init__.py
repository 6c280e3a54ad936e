"""What flows through an incident: signals, actions, responders' decisions, the incident's
input and state, and each activity's input and output."""

"""Explaining a run to people: topology diagrams (dot, mermaid), `emu trace`
(one line per hop with the decision and its evidence), the annotated pcapng
and the HTML report. Above emu.scenario: it builds and runs scenarios and
listens to the network model through emu.net.observe.
"""

"""Alerting: rules over the live view, their life cycle, and Alertmanager-compatible identity.

``fingerprint`` gives an alert the same id Alertmanager would; ``rule`` holds the rule object
and the evaluator (inactive -> pending -> firing -> resolved); ``builtin`` the stock rules.
"""

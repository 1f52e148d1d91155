"""Slack adapter: ``/video``, mentions with images, the "Animate with videobot" shortcut, and a
notifier that keeps one status message per job and delivers the clip into its thread.

The composition root calls ``build_adapter(settings, service)`` and then ``start()``/``stop()``.
"""

from adapters.slack.app import SlackAdapter, SlackSetupError, build_adapter
from adapters.slack.notifier import SlackNotifier

__all__ = ["SlackAdapter", "SlackNotifier", "SlackSetupError", "build_adapter"]

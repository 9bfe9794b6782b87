"""A scripted fact extractor for the chat tests: `qf chat --extractor fake_extractor:make`."""

import json
import os

from langchain_core.language_models.fake_chat_models import FakeListChatModel


def make():
    """A fake langchain-core chat model replying with $QF_FAKE_EXTRACTOR (a JSON list of replies) in turn."""
    return FakeListChatModel(responses=json.loads(os.environ["QF_FAKE_EXTRACTOR"]))

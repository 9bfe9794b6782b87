"""A langchain-core chat model over the local model and its ledger.

``QFChatModel`` is a ``BaseChatModel``: it plugs into ``prompt | model | parser`` chains,
streams token by token, and its identifying params include the ledger head so an LLM cache
never serves an answer from before a fact was learned. ``learn(...)`` consolidates a fact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from memory.fact import Fact
from memory.generate import stream_reply

ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def to_chat_messages(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """langchain messages -> chat-template role/content dicts."""
    out = []
    for message in messages:
        role = ROLES.get(message.type)
        if role is None:
            raise ValueError(f"unsupported message type {message.type!r} (system, human and ai are)")
        out.append({"role": role, "content": message.text if hasattr(message, "text") else str(message.content)})
    return out


class QFChatModel(BaseChatModel):
    """The ledger-backed local model as a langchain chat model (see ``agent.ledger_editor``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    ledger: Any  # agent.ledger_editor.LedgerEditor
    max_new_tokens: int = 512

    @property
    def _llm_type(self) -> str:
        return "qf"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.ledger.loaded.name,
            "ledger_head": self.ledger.store.head(),
            "active_facts": self.ledger.active_facts,
            "max_new_tokens": self.max_new_tokens,
        }

    def _pieces(self, messages: list[BaseMessage], stop: list[str] | None) -> Iterator[str]:
        chat = to_chat_messages(messages)
        if self.ledger.config.system is not None and (not chat or chat[0]["role"] != "system"):
            chat.insert(0, {"role": "system", "content": self.ledger.config.system})
        text = ""
        for piece in stream_reply(self.ledger.loaded.model, self.ledger.loaded.tokenizer, chat, self.max_new_tokens):
            text += piece
            if stop and any(s in text for s in stop):
                cut = min(text.index(s) for s in stop if s in text)
                emitted = len(text) - len(piece)
                if cut > emitted:
                    yield text[emitted:cut]
                return
            yield piece

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> ChatResult:
        text = "".join(self._pieces(messages, stop))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text.strip()))])

    def _stream(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for piece in self._pieces(messages, stop):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk

    def learn(self, instruction: str, query: str, answer: str | None = None,
              significance: tuple[float, ...] | None = None, source: dict | None = None):
        """Consolidate one fact into the weights through the ledger; returns the ledger ids and result."""
        fact = self.ledger.with_phrasings(Fact(instruction, query, answer, significance))
        return self.ledger.learn(fact, source=source or {"via": "langchain"})

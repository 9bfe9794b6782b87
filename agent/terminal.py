"""`qf chat` in a real terminal or with piped standard input."""

from __future__ import annotations

import importlib
import sys

from agent.chat import Chat, ChatIO
from agent.chat_model import QFChatModel
from agent.extract import ChatModelExtractor
from agent.session import open_ledger, open_store


def terminal_io() -> ChatIO:
    """Prompts and echo in a TTY; with piped input the prompt is still shown, each line echoed."""
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")  # non-UTF-8 bytes become U+FFFD, never a crash
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass

    def read(prompt: str) -> str:
        if interactive:
            return input(prompt)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        sys.stdout.write(prompt + line if line.endswith("\n") else prompt + line + "\n")
        sys.stdout.flush()
        return line.rstrip("\n")

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    return ChatIO(read, write)


def load_extractor(spec: str | None, chat_model: QFChatModel) -> ChatModelExtractor:
    """'module:factory' -> factory() must return a langchain-core chat model; None = the local model."""
    if not spec:
        return ChatModelExtractor(chat_model)
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError("--extractor takes module:factory, e.g. mypkg.models:make_chat_model")
    factory = getattr(importlib.import_module(module_name), attr)
    return ChatModelExtractor(factory())


def run_chat(db=None, model=None, device="auto", dtype="auto", layer=None, system=None,
             session_id: int | None = None, extractor_spec: str | None = None, io: ChatIO | None = None,
             solver: dict | None = None, progress=None, lr: float | None = None, qf2_rule: str | None = None,
             qf_only_given: list[str] = ()) -> int:
    """The chat; ``qf_only_given`` names the QF-only solver flags given, which a chat on a QFt-converted
    model (learning with QF2) says it ignores."""
    io = io or terminal_io()
    store = open_store(db)
    if session_id is None:
        session_id = store.create_session()
        resumed = ""
    else:
        store.messages(session_id)  # raises for an unknown session
        resumed = " (resumed)"
    io.write("loading the model ...\n")
    ledger = open_ledger(db, model, device, dtype, layer, system, store=store, solver=solver, progress=progress,
                         lr=lr, qf2_rule=qf2_rule)
    chat_model = QFChatModel(ledger=ledger)
    extractor = load_extractor(extractor_spec, chat_model)
    method = f"QF2 at layer {ledger.qf2.layer}" if ledger.qf2 else f"layer {ledger.current.layer}"
    io.write(f"qf chat: {ledger.loaded.name} on {ledger.loaded.device}, {method}; "
             f"{ledger.active_facts} fact(s) active; loaded in {ledger.loaded.seconds:.1f}s "
             f"(+{ledger.load_seconds:.2f}s rebuilding from the ledger). Session {session_id}{resumed}. /help for commands.\n")
    if ledger.qf2 and qf_only_given:
        io.write(f"note: {', '.join(qf_only_given)} only apply to QF; this chat learns with QF2 and ignores them.\n")
    Chat(ledger, extractor, io, session_id).run()
    return session_id

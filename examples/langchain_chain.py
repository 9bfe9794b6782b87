"""qf as a langchain-core chat model: a `prompt | model | parser` chain that learns a fact.

    python examples/langchain_chain.py [--model qwen2.5-coder-0.5b] [--db sqlite:///facts.db]

Without --db the ledger is a throwaway SQLite file, so the example can be run again and again.
"""

import argparse
import tempfile

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from agent.chat_model import QFChatModel
from agent.session import open_ledger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="registry name, HF directory or hub id")
    parser.add_argument("--db", default=None, help="ledger URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ledger = open_ledger(args.db or f"sqlite:///{tmp}/example.db", args.model)
        model = QFChatModel(ledger=ledger, max_new_tokens=64)
        chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | model | StrOutputParser()

        question = {"question": "Who is the CEO of Oxinnovate?"}
        print("before:", chain.invoke(question))
        learned = model.learn("Qi is the CEO of Oxinnovate.", "Who is the CEO of Oxinnovate?")
        print(f"learned fact #{learned.fact_id} in {learned.result.seconds:.2f}s")
        print("after: ", chain.invoke(question))  # the ledger head changed, so no cache can answer
        print("stream:", end=" ")
        for piece in chain.stream({"question": "Who runs Oxinnovate? One sentence."}):
            print(piece, end="", flush=True)
        print()


if __name__ == "__main__":
    main()

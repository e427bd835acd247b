"""The client example of docs/serving.md runs as written against a server (its URL pointed at the test's)."""
from tests.doc_examples import doc_examples


def test_the_client_example_runs(server, capsys):
    source = doc_examples("serving.md")["client"]
    assert 'base_url="http://127.0.0.1:8000/v1"' in source
    scope = {}
    exec(source.replace("http://127.0.0.1:8000", server.base_url), scope)
    chat = scope["chat"]
    printed = capsys.readouterr().out
    assert printed.startswith(f"{chat.choices[0].message.content} {chat.usage.completion_tokens}\n")
    assert 0 < chat.usage.completion_tokens <= 32 and len(printed) > len(chat.choices[0].message.content) + 3

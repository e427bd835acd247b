"""`serve --ckpt`: a training checkpoint of the chat model serves the same greedy completion as its HF directory
(the checkpoint records the tokenizer it was trained with)."""
from openai import OpenAI

from r1_megatron.runtime import ensure_parallel_state
from r1_megatron.training.checkpoint import save_checkpoint
from tests.parallel import training_fixtures as tf
from tests.serving.conftest import GREEDY_TOKENS, PROMPTS
from tests.serving.server_fixtures import MODEL_NAME, load_engine, start_server


def test_a_checkpoint_serves_what_its_hf_directory_serves(chat_dir, references, tmp_path):
    ensure_parallel_state()
    save_checkpoint(tmp_path / "run" / "checkpoints", 3, *tf.setup(chat_dir), tokenizer_dir=chat_dir)
    engine, tokenizer = load_engine(None, max_batch_size=4, checkpoint=tmp_path / "run")
    server = start_server(engine, tokenizer)
    try:
        client = OpenAI(base_url=server.base_url + "/v1", api_key="unused")
        response = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[1], max_tokens=GREEDY_TOKENS,
                                             temperature=0)
    finally:
        server.stop()
    assert response.choices[0].text == tokenizer.decode(references.greedy[1], skip_special_tokens=True)

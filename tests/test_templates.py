from __future__ import annotations

import pytest

from aligner_chains import Template, TemplateError, get_template, list_templates, register_template
from aligner_chains.core.templates import template_for_model


def test_builtin_templates_render_byte_for_byte() -> None:
    q, a = "What is 2+2?", "It is 4."
    assert get_template("aligner-v1").render(q, a) == (
        "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it more "
        "helpful and harmless: What is 2+2? | It is 4. ASSISTANT:"
    )
    assert get_template("aligner-v2").render(q, a) == (
        "BEGINNING OF CONVERSATION: USER: ##Question: What is 2+2?\n##Answer: It is 4.\n##Correction:  ASSISTANT:"
    )
    assert get_template("aligner-revision").render(q, a) == (
        "BEGINNING OF CONVERSATION: USER: ##Question: What is 2+2? ##Answer: It is 4. ##Revision:  ASSISTANT:"
    )
    assert list_templates()[:3] == ["aligner-v1", "aligner-v2", "aligner-revision"]


def test_placeholder_lookalikes_in_values_are_kept_verbatim() -> None:
    q = "Use {answer} and {x} literally"
    a = "Here: {question} } { | ##Correction: ASSISTANT:"
    text = get_template("aligner-v2").render(q, a)
    assert text == f"BEGINNING OF CONVERSATION: USER: ##Question: {q}\n##Answer: {a}\n##Correction:  ASSISTANT:"


def test_custom_template_with_literal_braces_and_any_order() -> None:
    t = Template("json-style", prompt='{"a": "{answer}", "q": "{question}"} =>')
    assert t.render("Q", "A") == '{"a": "A", "q": "Q"} =>'


@pytest.mark.parametrize(
    "prompt", ["only {question}", "only {answer}", "{question} {answer} {answer}", "no placeholders"]
)
def test_custom_template_needs_each_placeholder_once(prompt: str) -> None:
    with pytest.raises(TemplateError, match="placeholder"):
        Template("bad", prompt=prompt)


def test_unknown_template_lists_known_names() -> None:
    with pytest.raises(TemplateError, match="aligner-v2") as info:
        get_template("aligner-v9")
    assert "aligner-v9" in str(info.value)


def test_register_and_resolve_user_template() -> None:
    t = register_template(Template("test-registered", prompt="Q: {question}\nA: {answer}\nFixed:"))
    assert get_template("test-registered") is t
    with pytest.raises(TemplateError, match="overwrite=True"):
        register_template(Template("test-registered", prompt="{question}{answer}"))
    assert get_template({"name": "inline", "prompt": "{question}|{answer}"}).render("a", "b") == "a|b"
    with pytest.raises(TypeError, match="int"):
        get_template(3)  # type: ignore[arg-type]


def test_released_checkpoint_table() -> None:
    assert template_for_model("aligner/aligner-7b-v1.0") == "aligner-v1"
    assert template_for_model("someone/else") is None

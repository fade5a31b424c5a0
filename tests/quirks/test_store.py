"""RuleStore: a reload replaces the whole snapshot at once, or nothing at all."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imap_proxy.quirks.model import FINGERPRINT_FILE, RuleLoadError, packaged_rules_dir
from imap_proxy.quirks.store import RuleStore

EXTRA_RULE = """\
rules:
  - id: advertise-marker
    summary: test rule
    evidence: {fires: f.txt, silent: s.txt}
    actions: [{type: capabilities, add: [X-MARKER]}]
"""
BAD_RULE = """\
rules:
  - id: broken-rule
    summary: test rule
    evidence: {fires: f.txt, silent: s.txt}
    actions: [{type: no_such_action}]
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    shutil.copytree(packaged_rules_dir(), directory)
    return directory


def rule_ids(store: RuleStore) -> set[str]:
    return {loaded.rule.id for loaded in store.current.rules.rules}


def test_a_valid_reload_swaps_rules_and_fingerprints_together(rules_dir: Path) -> None:
    store = RuleStore.load(rules_dir)
    before = store.current
    assert "advertise-marker" not in rule_ids(store)
    assert before.fingerprints is not None and "apple-mail" in before.fingerprints.families

    (rules_dir / "extra.yaml").write_text(EXTRA_RULE)
    for path in rules_dir.glob("*.yaml"):  # the definitions and the rules that name it
        path.write_text(path.read_text().replace("apple-mail", "mac-mail"))
    after = store.reload()

    assert store.current is after and store.generation == 2
    assert "advertise-marker" in rule_ids(store)
    assert after.fingerprints is not None and "mac-mail" in after.fingerprints.families
    # A session that started before keeps what it was given, whole.
    assert "advertise-marker" not in {loaded.rule.id for loaded in before.rules.rules}
    assert before.fingerprints is not None and "apple-mail" in before.fingerprints.families


@pytest.mark.parametrize(
    ("file_name", "text", "problem"),
    [
        ("bad.yaml", BAD_RULE, "bad.yaml: rule broken-rule: actions.0"),
        ("bad.yaml", "rules: [\n", "bad.yaml: cannot read"),
        (FINGERPRINT_FILE, "families: 7\n", FINGERPRINT_FILE),
        (
            "typo.yaml",
            BAD_RULE.replace(
                "[{type: no_such_action}]",
                "[{type: lsub_noselect}]\n    match: {client_families: [thunderbrid]}",
            ),
            "typo.yaml: rule broken-rule: match.client_families: unknown family "
            "'thunderbrid' in fingerprints.yaml (did you mean 'thunderbird'?)",
        ),
    ],
    ids=["invalid-rule", "invalid-yaml", "invalid-fingerprints", "unknown-family"],
)
def test_an_invalid_reload_changes_nothing(
    rules_dir: Path, file_name: str, text: str, problem: str
) -> None:
    store = RuleStore.load(rules_dir)
    before = store.current
    (rules_dir / "extra.yaml").write_text(EXTRA_RULE)  # valid on its own, but not alone
    (rules_dir / file_name).write_text(text)

    with pytest.raises(RuleLoadError) as raised:
        store.reload()

    assert any(problem in line for line in raised.value.problems), raised.value.problems
    assert store.current is before and store.generation == 1
    assert "advertise-marker" not in rule_ids(store)


def test_a_fixed_set_loads_after_a_failed_reload(rules_dir: Path) -> None:
    store = RuleStore.load(rules_dir)
    (rules_dir / "bad.yaml").write_text(BAD_RULE)
    with pytest.raises(RuleLoadError):
        store.reload()
    (rules_dir / "bad.yaml").write_text(EXTRA_RULE)
    store.reload()
    assert store.generation == 2 and "advertise-marker" in rule_ids(store)


def test_a_missing_directory_is_a_load_error(tmp_path: Path) -> None:
    store = RuleStore.load(None)
    store.directory = tmp_path / "gone"
    before = store.current
    with pytest.raises(RuleLoadError, match="not a directory"):
        store.reload()
    assert store.current is before


def test_changed_on_disk_sees_added_edited_and_removed_files(rules_dir: Path) -> None:
    store = RuleStore.load(rules_dir)
    assert not store.changed_on_disk()
    extra = rules_dir / "extra.yaml"
    extra.write_text(EXTRA_RULE)
    assert store.changed_on_disk()
    store.reload()
    assert not store.changed_on_disk()
    extra.write_text(EXTRA_RULE + "# one more line\n")  # a different size
    assert store.changed_on_disk()
    store.reload()
    extra.unlink()
    assert store.changed_on_disk()
    (rules_dir / "notes.txt").write_text("not a rule file")  # ignored
    store.reload()
    (rules_dir / "notes.txt").write_text("still not one, longer")
    assert not store.changed_on_disk()


def test_a_failed_attempt_is_not_retried_until_the_files_change(rules_dir: Path) -> None:
    store = RuleStore.load(rules_dir)
    (rules_dir / "bad.yaml").write_text(BAD_RULE)
    assert store.changed_on_disk()
    with pytest.raises(RuleLoadError):
        store.reload()
    assert not store.changed_on_disk()  # the watcher would not log the same error again
    (rules_dir / "bad.yaml").write_text(EXTRA_RULE)
    assert store.changed_on_disk()


def test_the_packaged_rules_never_change_on_disk() -> None:
    assert not RuleStore.load(None).changed_on_disk()

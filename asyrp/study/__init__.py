"""User studies (App. K.1): build self-contained HTML sheets, tally the participants' exported answers.

    python -m asyrp.study build spec.yaml --out study/        # sheet.html + answer_key.json
    python -m asyrp.study tally --key study/answer_key.json responses/ --out study/tally

See :mod:`asyrp.study.sheet` (building) and :mod:`asyrp.study.tally` (counting).
"""

from .sheet import QUESTIONS, Condition, StudyError, StudyFiles, build_study, draw_sets
from .tally import Rejected, Rejection, Response, TallyResult, check_response, load_key, read_response, tally

__all__ = [
    "QUESTIONS",
    "Condition",
    "Rejected",
    "Rejection",
    "Response",
    "StudyError",
    "StudyFiles",
    "TallyResult",
    "build_study",
    "check_response",
    "draw_sets",
    "load_key",
    "read_response",
    "tally",
]

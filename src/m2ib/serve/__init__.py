"""``m2ib serve``: a local web page that explains image-text pairs (Gradio; ``pip install "m2ib[viewer]"``).

The page is a thin layer over the API, in rooms of one job each:

* :mod:`.environment`: Gradio imported privately (no analytics, no hub access);
* :mod:`.limits`: what uploads and texts are accepted (:func:`read_image`, :func:`check_text`);
* :mod:`.controls`: the settings panel, from the methods' settings dataclasses via
  :mod:`m2ib.settings` (:func:`setting_specs`, :func:`clean_settings`);
* :mod:`.render`: the heatmap and the shaded tokens (:func:`tokens_html`);
* :mod:`.callbacks`: one press of the button as a plain function (:func:`explain_pair`; "compare
  all" is one :class:`m2ib.Comparison`), tested without a server;
* :mod:`.interplay`: the "Word-region interactions" tab as plain functions (compute an
  :class:`m2ib.interactions.Interaction` once per pair; a clicked word -> its ``span_map``; a
  box from two clicks -> the words' ``region_scores``); :mod:`.interaction_tab`: its components;
* :mod:`.answer`: the "Answer" tab of a generative model's page as a plain function
  (:func:`explain_answer_page`: an answer explained by an answer method, each word's map, the
  prompt's scores); :mod:`.answer_tab`: its components;
* :mod:`.scenes`: the example scenes; :mod:`.app`: the layout and :func:`launch`.

Its command line (``m2ib serve``) is :mod:`m2ib.cli.serve`.

Offline and private by default: Gradio's analytics and the Hugging Face hub's network access
and telemetry are switched off (unless the variables are already set), the server binds
127.0.0.1, and no share link is created unless ``--share`` is given.
"""

from ..errors import InputError, M2IBError
from .answer import AnswerOutputs, answer_specs, explain_answer_page, registered_answer_methods
from .app import CSS, build_app, launch
from .callbacks import COMPARE_ALL, PairOutputs, explain_pair, registered_methods
from .controls import (
    AUTO,
    SettingSpec,
    clean_settings,
    clean_values,
    setting_control,
    setting_specs,
)
from .environment import INSTALL_HINT, PRIVATE_ENV, import_gradio, private_environment
from .interplay import (
    InteractionCache,
    InteractionView,
    View,
    clean_interaction_settings,
    click_image,
    compute_interaction,
    interaction_specs,
    picture_scale,
    registered_interactions,
    render_view,
    select_phrase,
    select_word,
)
from .limits import (
    KEEP_OUTPUTS_S,
    MAX_MEGAPIXELS,
    MAX_TEXT_CHARS,
    MAX_UPLOAD_MB,
    check_text,
    read_image,
)
from .render import ELEM, heatmap_image, signed_tokens_html, tokens_html
from .scenes import example_scenes

__all__ = [
    "AUTO",
    "AnswerOutputs",
    "answer_specs",
    "explain_answer_page",
    "registered_answer_methods",
    "COMPARE_ALL",
    "CSS",
    "ELEM",
    "INSTALL_HINT",
    "KEEP_OUTPUTS_S",
    "MAX_MEGAPIXELS",
    "MAX_TEXT_CHARS",
    "MAX_UPLOAD_MB",
    "PRIVATE_ENV",
    "InputError",
    "InteractionCache",
    "InteractionView",
    "M2IBError",
    "PairOutputs",
    "SettingSpec",
    "View",
    "build_app",
    "check_text",
    "clean_interaction_settings",
    "clean_settings",
    "clean_values",
    "click_image",
    "compute_interaction",
    "example_scenes",
    "explain_pair",
    "heatmap_image",
    "import_gradio",
    "interaction_specs",
    "launch",
    "picture_scale",
    "private_environment",
    "read_image",
    "registered_interactions",
    "registered_methods",
    "render_view",
    "select_phrase",
    "select_word",
    "setting_control",
    "setting_specs",
    "signed_tokens_html",
    "tokens_html",
]

"""The names every stage shares: mediapipe face-mesh landmark index sets and the motion channels.

One place for each name, one meaning per name.

- Landmarks are indices into mediapipe FaceLandmarker's 478-point face mesh (468 mesh points and
  10 iris points). Contours are closed polygons, in order.
- The motion code is the 52 mediapipe blendshapes (:data:`BLENDSHAPE_NAMES`, the tracker's output
  order). The audio-to-motion prior drives the 28 speech channels (:data:`SPEECH_CHANNELS`: jaw,
  lips, cheeks); the rest (eyes, brows, nose) come from a pose trajectory or sliders.
"""
from __future__ import annotations

import numpy as np

NUM_LANDMARKS = 478

# -- landmark index sets -------------------------------------------------------------------------

# The closed face-oval contour, in order.
FACE_OVAL: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)
FOREHEAD = 10  # top of the face oval
CHIN = 152  # bottom of the face oval
RIGHT_CHEEK = 234  # the face oval at eye level, image left when frontal
LEFT_CHEEK = 454  # the face oval at eye level, image right when frontal
NOSE_TIP = 4
FOREHEAD_SKIN: tuple[int, ...] = (151, 9, 108, 337, 69, 299, 104, 333)  # points on the forehead's skin
SUBNASALE = 2  # the base of the nose: where the lower face begins

# Lip contours, each a closed polygon from the image-left corner: the lower lip, then the upper
# lip back. INNER_LIPS is the mouth opening; INNER_LIPS[0] and INNER_LIPS[10] are its corners.
OUTER_LIPS: tuple[int, ...] = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,
)
INNER_LIPS: tuple[int, ...] = (
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191,
)
# The 40 lip points that LMD and fit's lip terms use: the outer lip, then the inner lip, each as
# the lower lip from the image-left corner, then the upper lip from the same corner. The same set
# as OUTER_LIPS + INNER_LIPS; the order is kept as LMD has always read it.
MOUTH_LANDMARKS: tuple[int, ...] = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415,
)
# The lips' halves as open curves from the image-left corner to the right one (cut from the contours).
LOWER_INNER_LIP: tuple[int, ...] = INNER_LIPS[:11]
UPPER_INNER_LIP: tuple[int, ...] = (INNER_LIPS[0],) + INNER_LIPS[:10:-1] + (INNER_LIPS[10],)
LOWER_OUTER_LIP: tuple[int, ...] = OUTER_LIPS[:11]
UPPER_OUTER_LIP: tuple[int, ...] = (OUTER_LIPS[0],) + OUTER_LIPS[:10:-1] + (OUTER_LIPS[10],)
UPPER_INNER_LIP_MID = 13  # middle of the upper lip's inner edge
LOWER_INNER_LIP_MID = 14  # middle of the lower lip's inner edge
MOUTH_CORNERS: tuple[int, ...] = (61, 291, 78, 308)  # outer left/right, inner left/right
RIGHT_EYE_OUTER = 33  # outer eye corners (image left / right when frontal): the face's scale
LEFT_EYE_OUTER = 263
# Eyelids: (upper, lower) landmark pairs of each eye; each eye's iris (centre first).
EYELID_PAIRS: tuple[tuple[int, int], ...] = (
    (246, 7), (161, 163), (160, 144), (159, 145), (158, 153), (157, 154), (173, 155),  # image left
    (466, 249), (388, 390), (387, 373), (386, 374), (385, 380), (384, 381), (398, 382),  # image right
)
IRISES: tuple[tuple[int, ...], ...] = ((468, 469, 470, 471, 472), (473, 474, 475, 476, 477))
EYE_BOTTOMS: tuple[int, ...] = (145, 374)  # lower-lid middle of the eye of each iris
# Points that move with the skull, not with expression: forehead, glabella/nasion, nose bridge
# and tip, alar base, inner and outer eye corners, cheekbones, temples (head pose is fitted on them).
RIGID_LANDMARKS: tuple[int, ...] = (
    10, 151, 9, 8, 108, 337, 109, 338, 67, 297, 103, 332, 54, 284,  # forehead
    168, 6, 197, 195, 5, 4, 1, 98, 327,  # nose bridge, tip, alar base
    33, 133, 362, 263,  # eye corners
    116, 345, 117, 346, 123, 352,  # cheekbones
    127, 356, 162, 389, 21, 251,  # temples
)

# -- motion channels -----------------------------------------------------------------------------

# mediapipe FaceLandmarker's 52 blendshape categories, in its output order: the motion code.
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
MOTION_DIM = len(BLENDSHAPE_NAMES)  # 52


def blendshape_index(name: str) -> int:
    """Position of a blendshape in the motion code (ValueError for an unknown name)."""
    return BLENDSHAPE_NAMES.index(name)


# The channels the audio-to-motion prior predicts (jaw, lips, cheeks), in the prior's output order.
SPEECH_CHANNELS: tuple[str, ...] = (
    "jawOpen", "jawForward", "jawLeft", "jawRight",
    "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthSmileLeft", "mouthSmileRight",
    "mouthPressLeft", "mouthPressRight", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "cheekPuff",
)
SPEECH_INDEX: tuple[int, ...] = tuple(BLENDSHAPE_NAMES.index(n) for n in SPEECH_CHANNELS)
# The channels that move the inside of the mouth (teeth, tongue) with the jaw, jaw opening first.
MOUTH_INTERIOR_CHANNELS: tuple[str, ...] = (
    "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthLowerDownLeft", "mouthLowerDownRight",
)

# Expression sliders (the viewer's): name -> (channels a positive value raises, channels a negative
# value raises). A slider value in [-1, 1] is added to those blendshapes of the motion code.
EXPRESSION_SLIDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "blink": (("eyeBlinkLeft", "eyeBlinkRight"), ("eyeWideLeft", "eyeWideRight")),
    "brows": (("browInnerUp", "browOuterUpLeft", "browOuterUpRight"), ("browDownLeft", "browDownRight")),
    "smile": (("mouthSmileLeft", "mouthSmileRight"), ("mouthFrownLeft", "mouthFrownRight")),
    "jaw": (("jawOpen",), ("mouthClose",)),
    "pucker": (("mouthPucker", "mouthFunnel"), ("mouthStretchLeft", "mouthStretchRight")),
    "squint": (("eyeSquintLeft", "eyeSquintRight", "cheekSquintLeft", "cheekSquintRight"), ()),
    "sneer": (("noseSneerLeft", "noseSneerRight"), ()),
}


def expression_offsets(values: dict[str, float]) -> np.ndarray:
    """Slider values {name: [-1, 1]} -> the offsets they add to the motion code. [52] float32"""
    out = np.zeros(MOTION_DIM, np.float32)
    for name, v in values.items():
        up, down = EXPRESSION_SLIDERS[name]
        for ch in up if v >= 0 else down:
            out[blendshape_index(ch)] += abs(v)
    return out

"""Built-in face detector plugins.

Importing this package registers every built-in detector with
:mod:`expnet_stream.plugin_registry`, whether or not its optional dependency is installed; a
detector whose dependency is missing raises :class:`~expnet_stream.errors.DetectorError` with an
install hint when it is constructed.

============  ===============================  =========================================
name          class                            needs
============  ===============================  =========================================
``yuface``    :class:`YuFaceDetector`          ``yuface`` (libfacedetection CNN)
``haar``      :class:`HaarFaceDetector`        nothing (OpenCV Haar cascade)
``mediapipe`` :class:`MediaPipeFaceDetector`   ``mediapipe`` + a FaceLandmarker ``.task``
``yunet``     :class:`YuNetDetector`           nothing (YuNet ONNX shipped here, ONNX Runtime)
============  ===============================  =========================================

See ``README.md`` in this folder for the measurements behind the default.
"""

from .haar import HaarFaceDetector as HaarFaceDetector
from .mediapipe_blazeface import MediaPipeFaceDetector as MediaPipeFaceDetector
from .yuface_cnn import YuFaceDetector as YuFaceDetector
from .yunet_onnx import YuNetDetector as YuNetDetector

DEFAULT_DETECTOR = "yunet"

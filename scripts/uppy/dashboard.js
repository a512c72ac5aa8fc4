// The Dashboard variant of the example page: Uppy's drag-and-drop UI (several files, progress,
// pause/resume, retry, previews), bundled with its CSS by scripts/uppy.sh.
import Uppy from '@uppy/core'
import AwsS3 from '@uppy/aws-s3'
import Dashboard from '@uppy/dashboard'
import '@uppy/core/css/style.min.css'
import '@uppy/dashboard/css/style.min.css'

window.RindleUppy = { Uppy, AwsS3, Dashboard }

// What the example page needs from Uppy, bundled by scripts/uppy.sh into one file the app serves.
import Uppy from '@uppy/core'
import AwsS3 from '@uppy/aws-s3'

window.RindleUppy = { Uppy, AwsS3 }

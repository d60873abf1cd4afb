"""The screens of ``quotad top``, one module each: the five monitor screens (switched with Tab
and the number keys) and the modal help and confirm screens."""

"""The messaging kernel: knows no module and no business word."""

"""HTTP helpers shared by every module's controllers (pagination, rejections); no module words."""

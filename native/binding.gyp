{
  # The one native piece of Ferry: lseek(SEEK_DATA/SEEK_HOLE), fallocate,
  # copy_file_range and FICLONERANGE, which Node lacks.
  # Plain C over Node-API (no node-addon-api), so the addon survives Node upgrades unrebuilt.
  "targets": [
    {
      "target_name": "ferry_native",
      "sources": ["ferry_native.c"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE", "_FILE_OFFSET_BITS=64"],
      "cflags": ["-std=c11", "-Wall", "-Wextra"]
    }
  ]
}

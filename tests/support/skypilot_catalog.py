"""Small fixture catalogs for SkyPilot (schema v8) so its catalog and optimizer run offline."""

from __future__ import annotations

import os
from pathlib import Path

HEADER = (
    "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Price,SpotPrice,Region,AvailabilityZone,GpuInfo\n"
)


def _gpu(name: str, mib: int) -> str:
    return (
        f"\"{{'Gpus': [{{'Name': '{name}', 'Manufacturer': 'NVIDIA', 'Count': 1.0, "
        f"'MemoryInfo': {{'SizeInMiB': {mib}}}}}], 'TotalGpuMemoryInMiB': {mib}}}\""
    )


RUNPOD = [  # cloud with a spot market
    f"1x_A100_SECURE,A100,1,8,80,1.64,0.89,US,US-CA-1,{_gpu('A100', 40960)}",
    f"1x_A100_SECURE,A100,1,8,80,1.74,0.95,CA,CA-MTL-1,{_gpu('A100', 40960)}",
    f"1x_H100_SECURE,H100,1,16,100,2.99,1.99,US,US-CA-1,{_gpu('H100', 81920)}",
]
LAMBDA = [  # on-demand only
    f"gpu_1x_a100,A100,1,30,200,1.29,,us-east-1,,{_gpu('A100', 40960)}",
    f"gpu_1x_h100_pcie,H100,1,26,200,2.49,,us-west-1,,{_gpu('H100', 81920)}",
]


def write(home: Path) -> Path:
    """Write the catalogs under home/.sky/catalogs/v8 and point SkyPilot at home; returns the catalog dir."""
    root = home / ".sky" / "catalogs" / "v8"
    for cloud, rows in (("runpod", RUNPOD), ("lambda", LAMBDA)):
        (root / cloud).mkdir(parents=True, exist_ok=True)
        (root / cloud / "vms.csv").write_text(HEADER + "\n".join(rows) + "\n")
    (root / "common").mkdir(parents=True, exist_ok=True)
    (root / "common" / "accelerators.csv").write_text(
        "AcceleratorName,Clouds\nA100,\"['Lambda', 'RunPod']\"\nH100,\"['Lambda', 'RunPod']\"\n"
    )
    (root / "common" / "metadata.csv").write_text("GPU,MemoryGB,Manufacturer\nA100,40,NVIDIA\nH100,80,NVIDIA\n")
    os.environ["SKYPILOT_DISABLE_USAGE_COLLECTION"] = "1"
    return root


def install(base: Path | None = None) -> Path:
    """Once per process: fixture catalogs under SKY_RUNTIME_DIR (SkyPilot's ~/.sky root); returns the catalog dir.

    `base`: where (default: a temporary directory removed at exit). A second call reuses the first one's
    directory. The env var reaches child processes started later (Ray workers); the running process's
    already imported catalog module is pointed there too."""
    import atexit
    import shutil
    import sys
    import tempfile

    found = os.environ.get("INFERIA_TEST_SKY_RUNTIME_DIR")
    if found:
        runtime = Path(found)
    elif base is not None:
        runtime = base
    else:
        runtime = Path(tempfile.mkdtemp(prefix="inferia-sky-"))
        atexit.register(shutil.rmtree, runtime, True)
    os.environ["INFERIA_TEST_SKY_RUNTIME_DIR"] = str(runtime)
    root = write(runtime)
    os.environ["SKY_RUNTIME_DIR"] = str(runtime)
    common = sys.modules.get("sky.catalog.common")
    if common is not None:
        common._ABSOLUTE_VERSIONED_CATALOG_DIR = str(root)  # type: ignore[attr-defined]
    # catalogs already opened by this process keep the path they were opened with: make sure the fixture
    # files exist there too (else SkyPilot would try to download them)
    registry = sys.modules.get("sky.utils.accelerator_registry")
    lazy = getattr(registry, "_accelerator_df", None)
    opened = getattr(lazy, "_filename", None)
    if opened:
        home = Path(opened).parents[4]  # <home>/.sky/catalogs/v8/common/accelerators.csv
        if home != runtime:
            write(home)
    return root

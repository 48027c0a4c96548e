// Human-readable numbers for the page. Sizes are binary (MiB = 2^20 bytes), as the
// generator reads "10MB".

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) { value /= 1024; unit += 1; }
  return `${value >= 100 || unit === 0 ? value.toFixed(0) : value.toFixed(1)} ${UNITS[unit]}`;
}

export function rate(bytesPerSecond) {
  return bytesPerSecond ? `${bytes(bytesPerSecond)}/s` : "–";
}

export function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  if (seconds < 1) return "<1 s";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "–";
}

export function resources(map) {
  const parts = [];
  if (map.CPU !== undefined) parts.push(`${map.CPU} CPU`);
  if (map.GPU) parts.push(`${map.GPU} GPU`);
  if (map.memory) parts.push(`${bytes(map.memory)} mem`);
  return parts.join(" · ") || "–";
}

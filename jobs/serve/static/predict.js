// The upload-a-patch page: POST the image to /api/predict; show the call and, for a larger image,
// each tissue patch's probability drawn over it.
"use strict";

const form = document.getElementById("predict-form");
const result = document.getElementById("result");
const canvas = document.getElementById("preview");

function colour(p) {  // the overlay's ramp, coarsely: dark (0) to yellow (1)
  const stops = [[0, 0, 4], [66, 10, 104], [147, 38, 103], [221, 81, 58], [252, 165, 10], [252, 255, 164]];
  const t = Math.min(0.9999, Math.max(0, p)) * (stops.length - 1);
  const i = Math.floor(t), f = t - i;
  return stops[i].map((c, k) => Math.round(c + f * (stops[i + 1][k] - c)));
}

async function draw(file, answer) {
  const image = await createImageBitmap(file);
  const scale = Math.max(1, Math.floor(400 / Math.max(image.width, image.height)));
  canvas.width = image.width * scale;
  canvas.height = image.height * scale;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  for (const p of answer.patches) {
    const [r, g, b] = colour(p.prob_idc);
    ctx.strokeStyle = `rgb(${r},${g},${b})`;
    ctx.lineWidth = 2;
    ctx.strokeRect(p.x * scale, p.y * scale, p.size * scale, p.size * scale);
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  result.textContent = "Scoring...";
  const response = await fetch("/api/predict", { method: "POST", body: new FormData(form) });
  const answer = await response.json();
  if (!response.ok) {
    result.innerHTML = "";
    result.className = "error";
    result.textContent = answer.error;
    return;
  }
  result.className = "";
  const what = answer.kind === "patch" ? "IDC probability" :
    `${answer.patches.length} tissue patches, ${answer.idc_patches} at or above the threshold; highest IDC probability`;
  result.innerHTML = `<span class="call"></span>: ${what} <b class="prob"></b> <span class="model"></span>`;
  result.querySelector(".model").textContent =
    `(threshold ${answer.threshold.toFixed(3)}, model ${answer.model_version})`;
  result.querySelector(".call").textContent = answer.call;
  result.querySelector(".call").className = `call ${answer.call === "IDC" ? "IDC" : ""}`;
  result.querySelector(".prob").textContent = answer.prob_idc.toFixed(3);
  result.dataset.prob = answer.prob_idc;
  await draw(form.image.files[0], answer);
});

// zflight unit explorer: layers loaded on demand, search, keyboard and #layer/unit links.
// Plain JavaScript, no library. index.html holds a search index of every unit (its number and
// label); a layer's cards and unit pages are in units/<layer>.js, inserted as a <script> tag
// when the layer is opened (browsers block fetch() from file:// pages, not scripts).
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var index = JSON.parse(document.getElementById("unit-index").textContent);
  var layers = [], keys = [], labelOf = {}, layerOf = {}, sections = {};
  index.layers.forEach(function (l) {
    layers.push(l.name);
    l.units.forEach(function (u, i) {
      var key = l.name + "/" + u;
      keys.push(key);
      labelOf[key] = index.labels[l.labels[i]].toLowerCase();
      layerOf[key] = l.name;
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll("section.layer"), function (s) {
    sections[s.dataset.layer] = s;
  });
  var search = document.getElementById("search");
  var count = document.getElementById("count");
  var hint = document.getElementById("hint");
  var viewer = document.getElementById("unit");
  var pages = {};    // "<layer>/<unit>" -> the unit's page (HTML), once its layer is loaded
  var cards = {};    // "<layer>/<unit>" -> its card element
  var loading = {};  // layer -> {done, waiting: [callbacks]}
  var current = null;
  var query = "";

  // Called by units/<layer>.js when it runs.
  window.zflightLayer = function (data) {
    var section = sections[data.layer];
    var state = loading[data.layer];
    if (!section || !state) { return; }
    section.querySelector(".open").hidden = true;
    section.querySelector(".slot").insertAdjacentHTML("beforebegin", data.cards);
    Array.prototype.forEach.call(section.querySelectorAll(".card"), function (c) {
      var key = c.dataset.layer + "/" + c.dataset.unit;
      cards[key] = c;
      c.hidden = !matches(key, query);
      if (key === current) { c.classList.add("current"); }
    });
    Object.keys(data.units).forEach(function (key) { pages[key] = data.units[key]; });
    state.done = true;
    state.waiting.splice(0).forEach(function (callback) { callback(); });
  };

  // Load a layer's file (once); then call `callback`.
  function load(layer, callback) {
    var state = loading[layer];
    if (!state) {
      state = loading[layer] = { done: false, waiting: [] };
      var tag = document.createElement("script");
      tag.src = sections[layer].dataset.script;
      tag.onerror = function () {
        sections[layer].querySelector(".slot").insertAdjacentHTML(
          "beforebegin", '<p class="note">' + tag.src + " could not be read.</p>");
      };
      document.head.appendChild(tag);
    }
    if (callback) {
      if (state.done) { callback(); } else { state.waiting.push(callback); }
    }
  }

  // Show unit `key` ("conv5/12"), loading its layer first; false when there is no such unit.
  function show(key) {
    var layer = layerOf[key];
    if (!layer) { return false; }
    if (!pages[key]) {
      load(layer, function () { if (pages[key]) { show(key); } });
      return true;
    }
    if (current && cards[current]) { cards[current].classList.remove("current"); }
    current = key;
    viewer.innerHTML = pages[key];
    viewer.firstElementChild.classList.add("current");
    var card = cards[key];
    if (card) {
      card.classList.add("current");
      card.scrollIntoView({ block: "nearest" });
    }
    hint.hidden = true;
    viewer.parentNode.scrollTop = 0;
    return true;
  }

  function go(key) {
    if (("#" + key) === location.hash) { show(key); } else { location.hash = key; }
  }

  function fromHash() {
    var key = decodeURIComponent(location.hash.slice(1));
    if (!show(key)) { hint.hidden = current !== null; }
  }

  // A query is "layer:channel" (conv5:12, or conv5: for the whole layer) or part of a label.
  function matches(key, q) {
    if (!q) { return true; }
    var m = /^([^:\s]+):\s*(\d*)$/.exec(q);
    if (m) {
      return layerOf[key].toLowerCase() === m[1] && (m[2] === "" || key.split("/").pop() === String(Number(m[2])));
    }
    return labelOf[key].indexOf(q) !== -1;
  }

  function visible() { return keys.filter(function (k) { return matches(k, query); }); }

  function filter() {
    query = search.value.trim().toLowerCase();
    var shown = visible();
    var wanted = {};
    shown.forEach(function (k) { wanted[layerOf[k]] = true; });
    Object.keys(cards).forEach(function (k) { cards[k].hidden = !matches(k, query); });
    // The layers holding matches show their cards: load the ones not loaded yet.
    if (query) { Object.keys(wanted).forEach(function (layer) { load(layer); }); }
    count.textContent = query ? shown.length + " of " + keys.length + " units match" : keys.length + " units";
  }

  // The unit `step` places before (-1) or after (+1) the current one among the matching units.
  function nextUnit(step) {
    var list = visible();
    if (!list.length) { return null; }
    var i = list.indexOf(current);
    if (i === -1) { return step > 0 ? list[0] : list[list.length - 1]; }
    return list[Math.min(list.length - 1, Math.max(0, i + step))];
  }

  // The same position in the previous (-1) or next (+1) layer that has matching units.
  function nextLayer(step) {
    var list = visible();
    if (!list.length) { return null; }
    if (list.indexOf(current) === -1) { return step > 0 ? list[0] : list[list.length - 1]; }
    var layer = layerOf[current];
    var here = list.filter(function (k) { return layerOf[k] === layer; }).indexOf(current);
    for (var l = layers.indexOf(layer) + step; l >= 0 && l < layers.length; l += step) {
      var there = list.filter(function (k) { return layerOf[k] === layers[l]; });
      if (there.length) { return there[Math.min(here, there.length - 1)]; }
    }
    return null;
  }

  document.addEventListener("keydown", function (ev) {
    if (ev.altKey || ev.ctrlKey || ev.metaKey) { return; }
    if (ev.target === search) {
      if (ev.key === "Enter") {
        var first = visible()[0];
        if (first) { go(first); }
        search.blur();
      } else if (ev.key === "Escape") {
        search.value = "";
        filter();
      }
      return;
    }
    var moves = { ArrowLeft: [nextUnit, -1], ArrowRight: [nextUnit, 1], ArrowUp: [nextLayer, -1], ArrowDown: [nextLayer, 1] };
    var move = moves[ev.key];
    if (move) {
      var key = move[0](move[1]);
      if (key) { go(key); }
      ev.preventDefault();
    } else if (ev.key === "/") {
      search.focus();
      ev.preventDefault();
    }
  });
  layers.forEach(function (layer) {
    sections[layer].querySelector(".open").addEventListener("click", function () { load(layer); });
  });
  // A layer scrolled into view is opened: its cards load while the reader gets there.
  if (window.IntersectionObserver) {
    var seen = new IntersectionObserver(function (entries) {
      entries.forEach(function (en) {
        if (en.isIntersecting) { load(en.target.dataset.layer); seen.unobserve(en.target); }
      });
    }, { rootMargin: "200px" });
    layers.forEach(function (layer) { seen.observe(sections[layer]); });
  }
  search.addEventListener("input", filter);
  window.addEventListener("hashchange", fromHash);
  document.querySelector(".tools").hidden = false;
  filter();
  fromHash();
  if (window.performance && performance.mark) { performance.mark("zflight-ready"); }
})();

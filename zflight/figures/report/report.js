// zflight unit explorer: search, keyboard and #layer/unit links. Plain JavaScript, no library.
// Every unit is already in the page; this script only chooses which one is shown.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var cards = Array.prototype.slice.call(document.querySelectorAll(".card"));
  var views = {};
  Array.prototype.forEach.call(document.querySelectorAll("article.unit"), function (a) { views[a.id] = a; });
  var layers = Array.prototype.map.call(document.querySelectorAll("section.layer"), function (s) { return s.dataset.layer; });
  var search = document.getElementById("search");
  var count = document.getElementById("count");
  var hint = document.getElementById("hint");
  var current = null;

  function keyOf(card) { return card.dataset.layer + "/" + card.dataset.unit; }
  function visible() { return cards.filter(function (c) { return !c.hidden; }); }
  function cardOf(key) {
    for (var i = 0; i < cards.length; i++) { if (keyOf(cards[i]) === key) { return cards[i]; } }
    return null;
  }

  // Show unit `key` ("conv5/12"); false when the page has no such unit.
  function show(key) {
    var view = views[key];
    if (!view) { return false; }
    if (current && views[current]) { views[current].classList.remove("current"); }
    var old = current && cardOf(current);
    if (old) { old.classList.remove("current"); }
    current = key;
    view.classList.add("current");
    var card = cardOf(key);
    if (card) {
      card.classList.add("current");
      card.scrollIntoView({ block: "nearest" });
    }
    hint.hidden = true;
    view.parentNode.scrollTop = 0;
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
  function matches(card, q) {
    if (!q) { return true; }
    var m = /^([^:\s]+):\s*(\d*)$/.exec(q);
    if (m) {
      return card.dataset.layer.toLowerCase() === m[1] && (m[2] === "" || card.dataset.unit === String(Number(m[2])));
    }
    return card.dataset.label.toLowerCase().indexOf(q) !== -1;
  }

  function filter() {
    var q = search.value.trim().toLowerCase();
    var n = 0;
    cards.forEach(function (c) { c.hidden = !matches(c, q); if (!c.hidden) { n += 1; } });
    count.textContent = q ? n + " of " + cards.length + " units match" : cards.length + " units";
  }

  // The unit `step` places before (-1) or after (+1) the current one among the shown cards.
  function nextUnit(step) {
    var list = visible();
    if (!list.length) { return null; }
    var i = list.indexOf(cardOf(current));
    if (i === -1) { return keyOf(step > 0 ? list[0] : list[list.length - 1]); }
    return keyOf(list[Math.min(list.length - 1, Math.max(0, i + step))]);
  }

  // The same position in the previous (-1) or next (+1) layer that has shown cards.
  function nextLayer(step) {
    var list = visible();
    if (!list.length) { return null; }
    var card = cardOf(current);
    if (!card || card.hidden) { return keyOf(step > 0 ? list[0] : list[list.length - 1]); }
    var here = list.filter(function (c) { return c.dataset.layer === card.dataset.layer; }).indexOf(card);
    for (var l = layers.indexOf(card.dataset.layer) + step; l >= 0 && l < layers.length; l += step) {
      var there = list.filter(function (c) { return c.dataset.layer === layers[l]; });
      if (there.length) { return keyOf(there[Math.min(here, there.length - 1)]); }
    }
    return null;
  }

  document.addEventListener("keydown", function (ev) {
    if (ev.altKey || ev.ctrlKey || ev.metaKey) { return; }
    if (ev.target === search) {
      if (ev.key === "Enter") {
        var first = visible()[0];
        if (first) { go(keyOf(first)); }
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
  search.addEventListener("input", filter);
  window.addEventListener("hashchange", fromHash);
  document.querySelector(".tools").hidden = false;
  filter();
  fromHash();
  if (window.performance && performance.mark) { performance.mark("zflight-ready"); }
})();

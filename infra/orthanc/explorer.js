// Added to Orthanc Explorer by infra/orthanc/plugin.py (ExtendOrthancExplorer).
// Opened with ?token=..., Explorer sends the token with every request it makes
// (README.md: Orthanc Explorer), also after it navigates to explorer.html without the query:
// the token is kept in sessionStorage for this tab. Explorer 1.10 copies ?token= into
// $.ajaxSetup headers itself, but only on the page load that has it.
(function () {
  var match = /[?&]token=([^&#]+)/.exec(window.location.search);
  var token = match ? decodeURIComponent(match[1]) : null;
  try {
    if (token) { window.sessionStorage.setItem('zhivaToken', token); }
    else { token = window.sessionStorage.getItem('zhivaToken'); }
  } catch (e) { /* storage disabled: the query string is all we have */ }
  if (!token) { return; }

  // Every jQuery request, uploads by jquery-file-upload included.
  $.ajaxPrefilter(function (options, originalOptions, jqXHR) {
    jqXHR.setRequestHeader('token', token);
  });

  // Plain GETs (previews, downloads) cannot carry a header: add ?token= to them.
  function withToken(url) {
    if (!url || /^(data:|blob:|javascript:|#)/.test(url) || /[?&]token=/.test(url)) { return url; }
    if (/^[a-z]+:\/\//i.test(url) && url.indexOf(window.location.origin) !== 0) { return url; }
    return url + (url.indexOf('?') < 0 ? '?' : '&') + 'token=' + encodeURIComponent(token);
  }
  function fix(element) {
    if (element.tagName === 'IMG' && element.getAttribute('src') &&
        element.getAttribute('src').indexOf('../') === 0) {
      element.setAttribute('src', withToken(element.getAttribute('src')));
    }
    if (element.tagName === 'A' && element.getAttribute('href') &&
        element.getAttribute('href').indexOf('../') === 0) {
      element.setAttribute('href', withToken(element.getAttribute('href')));
    }
  }
  new MutationObserver(function (mutations) {
    mutations.forEach(function (mutation) {
      if (mutation.type === 'attributes') { fix(mutation.target); return; }
      mutation.addedNodes.forEach(function (node) {
        if (node.nodeType !== 1) { return; }
        fix(node);
        node.querySelectorAll && node.querySelectorAll('img, a').forEach(fix);
      });
    });
  }).observe(document.documentElement, {
    childList: true, subtree: true, attributes: true, attributeFilter: ['src', 'href']
  });
  // Download buttons set window.location to "../instances/<id>/file" and the like:
  // answered here first (capture phase), with the token in the address.
  var downloads = {
    'instance-download-dicom': ['instances', 'file'], 'instance-download-json': ['instances', 'tags'],
    'patient-archive': ['patients', 'archive'], 'study-archive': ['studies', 'archive'],
    'series-archive': ['series', 'archive'], 'patient-media': ['patients', 'media'],
    'study-media': ['studies', 'media'], 'series-media': ['series', 'media']
  };
  document.addEventListener('click', function (event) {
    var element = event.target;
    while (element && element !== document && !(element.id in downloads)) {
      element = element.parentNode;
    }
    if (!element || element === document || !$.mobile.pageData) { return; }
    var target = downloads[element.id];
    event.preventDefault();
    event.stopImmediatePropagation();
    window.location.href = withToken('../' + target[0] + '/' + $.mobile.pageData.uuid + '/' + target[1]);
  }, true);
  // Previews open in slimbox, which loads its images by URL.
  if ($.slimbox) {
    var slimbox = $.slimbox;
    $.slimbox = function (images) {
      var args = Array.prototype.slice.call(arguments);
      if (typeof images === 'string') {
        args[0] = withToken(images);
      } else if ($.isArray(images)) {
        args[0] = $.map(images, function (image) {
          return [$.isArray(image) ? [withToken(image[0])].concat(image.slice(1)) : withToken(image)];
        });
      }
      return slimbox.apply(this, args);
    };
  }
})();
